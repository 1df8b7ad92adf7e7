"""FSDP on 8 fake CPU devices: smaller state per device, same loss, checkpoints that move
between meshes, and one-line refusals of meshes and batches that do not fit."""

import logging

import jax
import numpy as np
import pytest

from errors import UserError
from tests.configs import tiny
from training import loop, sharding
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.families import get_family

DATA_PARALLEL = (("data", 8), ("fsdp", 1))
FSDP = (("data", 2), ("fsdp", 4))
ONE_DEVICE = (("data", 1), ("fsdp", 1))


def _config(mesh):
    config = tiny.get_config("vpsde")
    # A U-Net whose parameters, not the step and rng, dominate the state; one resolution
    # and no attention at 8x8 halve the two compiles (the middle block keeps attention).
    config.model.nf = 32
    config.model.ch_mult = (1,)
    config.model.attn_resolutions = ()
    config.training.snapshot_sampling = False
    config.sharding.mesh = mesh
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two steps of the same run, data parallel and FSDP: {mesh name: (config, workdir,
    result, the 'Train state' log line)}."""
    root = tmp_path_factory.mktemp("fsdp")
    absl_logger = logging.getLogger("absl")
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            if record.getMessage().startswith("Train state:"):
                lines.append(record.getMessage())

    handler, level = Keep(), absl_logger.level
    absl_logger.addHandler(handler)
    absl_logger.setLevel(logging.INFO)
    try:
        out = {}
        for name, mesh in (("data", DATA_PARALLEL), ("fsdp", FSDP)):
            config = _config(mesh)
            result = loop.run(config, root / name, devices=jax.devices()[:8])
            out[name] = (config, root / name, result, lines[-1])
    finally:
        absl_logger.removeHandler(handler)
        absl_logger.setLevel(level)
    return out


def _restore(config, workdir, step, mesh_config, devices):
    """The run's checkpoint placed on `mesh_config` the way loop.run resumes it."""
    family = get_family(config)
    abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(config.seed))
    mesh = sharding.make_mesh(mesh_config, devices)
    shardings = loop.state_shardings(abstract, mesh, config.sharding.rules)
    ckpt = Checkpointer(workdir, config)
    state, _ = ckpt.restore(step, abstract_with_shardings(abstract, shardings))
    ckpt.close()
    return state


def _shard_bytes(tree) -> int:
    return sum(leaf.addressable_shards[0].data.nbytes for leaf in jax.tree.leaves(tree))


def test_fsdp_holds_a_quarter_of_the_state_per_device(runs):
    data = _restore(*runs["data"][:2], 2, DATA_PARALLEL, jax.devices()[:8])
    fsdp = _restore(*runs["fsdp"][:2], 2, FSDP, jax.devices()[:8])
    # The helper reads the shardings; the shards the devices really hold agree.
    assert sharding.bytes_per_device(data) == _shard_bytes(data)
    assert sharding.bytes_per_device(fsdp) == _shard_bytes(fsdp)
    # Measured: 2,594,852 bytes per device data parallel, 648,740 with fsdp=4, a ratio of
    # 3.99983 (only the step, the rng and the Adam count stay replicated).
    ratio = sharding.bytes_per_device(data) / sharding.bytes_per_device(fsdp)
    assert ratio >= 3.0, ratio
    params = data.params
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(params))
    sharded = [leaf for leaf in jax.tree.leaves(fsdp.params) if leaf.size >= 4 * 32]
    assert sharded and all("fsdp" in leaf.sharding.spec for leaf in sharded)
    # loop.run logged the same figure at the start of training.
    mib = sharding.bytes_per_device(fsdp) / 2**20
    assert runs["fsdp"][3].endswith(f"mesh data=2 x fsdp=4, {mib:.2f} MiB of state per device")
    assert "8 devices" in runs["fsdp"][3]


def test_fsdp_and_data_parallel_give_the_same_loss(runs):
    data, fsdp = runs["data"][2], runs["fsdp"][2]
    assert data["step"] == fsdp["step"] == 2
    # Step 2's loss depends on step 1's update, so this checks the gradients too.
    np.testing.assert_allclose(fsdp["loss"], data["loss"], rtol=1e-5)
    np.testing.assert_allclose(fsdp["grad_norm"], data["grad_norm"], rtol=1e-4)
    np.testing.assert_allclose(fsdp["eval_loss"], data["eval_loss"], rtol=1e-5)


def test_sharded_checkpoints_restore_onto_another_mesh(runs, tmp_path):
    config, workdir = runs["fsdp"][:2]
    eight = _restore(config, workdir, 2, FSDP, jax.devices()[:8])
    # 8 devices (saved FSDP-sharded) -> 1 device.
    one = _restore(config, workdir, 2, ONE_DEVICE, jax.devices()[:1])
    for a, b in zip(jax.tree.leaves(eight), jax.tree.leaves(one), strict=True):
        assert len(b.sharding.device_set) == 1
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # 1 device -> 8 devices, sharded over fsdp on restore.
    ckpt = Checkpointer(tmp_path, config)
    ckpt.save(2, one, {"epoch": 0, "position": 32})
    ckpt.close()
    again = _restore(config, tmp_path, 2, FSDP, jax.devices()[:8])
    assert sharding.bytes_per_device(again) == sharding.bytes_per_device(eight)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(again), strict=True):
        assert a.shape == b.shape
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize("mesh, batch_size, message", [
    ((("data", 16), ("fsdp", 1)), 16,
     r"^config.sharding.mesh \(\('data', 16\), \('fsdp', 1\)\) needs 16 devices, found 8$"),
    ((("data", -1), ("fsdp", 16)), 16, r"^config.sharding.mesh .* needs 16 devices, found 8$"),
    (FSDP, 12, r"^training.batch_size=12 is not divisible by the 8 devices of "
               r"config.sharding.mesh \(data=2 x fsdp=4\)$"),
])
def test_mesh_or_batch_that_does_not_fit_is_refused_before_anything_is_written(
        mesh, batch_size, message, tmp_path):
    config = _config(mesh)
    config.training.batch_size = batch_size
    with pytest.raises(UserError, match=message):
        loop.run(config, tmp_path / "run", devices=jax.devices()[:8])
    assert not (tmp_path / "run").exists()
