"""Sampling at scale: a run is sampled on the training mesh with the training shardings,
each batch split over the devices, and 1 or 8 devices draw the same samples for a seed.

The model is the tiny digits U-Net, freshly initialised on an 8-device FSDP mesh (the
checkpoint every test restores) with its parameters perturbed: a fresh U-Net's output layer
is near zero, and a zero score would hide any disagreement of the networks.
"""

import os
from pathlib import Path

import jax
import numpy as np
import pytest

from tests import cli_zygote
from tests.configs import tiny
from training import eval_hook, inference, loop, sharding
from training.checkpoint import Checkpointer
from training.families import get_family
from training.families.request import SampleRequest as R

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.py")
FSDP_8 = (("data", 1), ("fsdp", 8))
FSDP_2X4 = (("data", 2), ("fsdp", 4))
STEPS = 3


def _config(mesh=None):
    config = tiny.get_config("vpsde")
    if mesh is not None:
        config.sharding.mesh = mesh
    return config


def _perturbed(params, key):
    """Every parameter plus N(0, 0.05^2) noise: a network whose score is far from zero."""
    leaves, tree = jax.tree.flatten(params)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(tree, [p + 0.05 * jax.random.normal(k, p.shape, p.dtype)
                                     for p, k in zip(leaves, keys, strict=True)])


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory) -> Path:
    """A workdir whose step-1 checkpoint was written from an 8-device FSDP mesh."""
    workdir = tmp_path_factory.mktemp("fsdp_run")
    config = _config(FSDP_8)
    family = get_family(config)
    mesh = sharding.make_mesh(config.sharding.mesh, jax.devices()[:8])
    abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
    placed = loop.state_shardings(abstract, mesh, config.sharding.rules)

    def init(key):
        state = family.init_state(key)
        return state.replace(ema_params=_perturbed(state.ema_params, jax.random.fold_in(key, 1)))

    state = jax.jit(init, out_shardings=placed)(jax.random.PRNGKey(0))
    # The checkpoint really holds FSDP-sharded parameters.
    assert any("fsdp" in leaf.sharding.spec for leaf in jax.tree.leaves(state.ema_params))
    ckpt = Checkpointer(workdir, config)
    ckpt.save(1, state, {})
    ckpt.close()
    return workdir


@pytest.fixture(scope="module")
def restored(fsdp_run):
    """{name: (family, state)} of the FSDP checkpoint on 1 device, on 8 data parallel and
    on an 8-device FSDP mesh (data=2 x fsdp=4)."""
    out = {}
    for name, mesh, devices in (("one", None, jax.devices()[:1]),
                                ("data8", None, jax.devices()[:8]),
                                ("fsdp8", FSDP_2X4, jax.devices()[:8])):
        family, state, step = inference.restore_latest(_config(mesh), fsdp_run, devices=devices)
        assert step == 1
        out[name] = (family, state)
    return out


def test_restore_places_the_state_as_training_does(restored):
    _, one = restored["one"]
    _, data8 = restored["data8"]
    _, fsdp8 = restored["fsdp8"]
    assert inference.mesh_of(one).devices.size == 1
    assert dict(inference.mesh_of(data8).shape) == {"data": 8, "fsdp": 1}
    assert dict(inference.mesh_of(fsdp8).shape) == {"data": 2, "fsdp": 4}
    assert all(leaf.sharding.is_fully_replicated for leaf in jax.tree.leaves(data8.ema_params))
    big = [leaf for leaf in jax.tree.leaves(fsdp8.ema_params) if leaf.size >= 4 * 8]
    assert big and all("fsdp" in leaf.sharding.spec for leaf in big)
    for a, b in zip(jax.tree.leaves(one), jax.tree.leaves(fsdp8), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_one_and_eight_devices_draw_the_same_batch_split_over_the_devices(restored):
    """A batch of 5 is padded to 8 on 8 devices (one sample per device); its first 5 rows
    are the 1-device batch, to float rounding, with replicated and FSDP parameters."""
    key = np.asarray(jax.random.PRNGKey(7))
    draws = {}
    for name, (family, state) in restored.items():
        mesh = inference.mesh_of(state)
        draw = inference.BatchSampler(family, 5, mesh, R(num_samples=5, steps=STEPS))
        assert draw.padded_size == (5 if mesh.size == 1 else 8)
        x, nfe = draw(family.sample_params(state), key)
        assert int(nfe) == STEPS + 1  # and the denoising step
        assert x.shape == (draw.padded_size, 8, 8, 1)
        # Split over every device of the mesh: one sample each on 8 devices.
        assert x.sharding.is_equivalent_to(sharding.batch_sharding(mesh), x.ndim)
        assert {shard.data.shape[0] for shard in x.addressable_shards} == {x.shape[0] // mesh.size}
        draws[name] = np.asarray(x)[:5]
    assert draws["one"].std() > 0.1  # real images in [0, 1], not a constant
    np.testing.assert_allclose(draws["data8"], draws["one"], atol=1e-5)
    np.testing.assert_allclose(draws["fsdp8"], draws["one"], atol=1e-5)


def test_generate_gives_the_same_images_for_a_seed_whatever_the_device_count(restored):
    """13 samples in batches of 5 (5, 5, 3 of a padded 5): the same uint8 images on 1 and
    8 devices; another seed gives others."""
    got = {}
    for name in ("one", "fsdp8"):
        family, state = restored[name]
        generate = inference.make_generator(family, R(13, batch_size=5, steps=STEPS))
        got[name], nfe = generate(state, seed=3)
        assert got[name].shape == (13, 8, 8, 1) and got[name].dtype == np.uint8
        assert nfe == STEPS + 1
    # uint8 rounding may move a pixel whose float value sits on a step by one level.
    assert np.abs(got["one"].astype(int) - got["fsdp8"].astype(int)).max() <= 1
    assert np.mean(got["one"] == got["fsdp8"]) > 0.99
    family, state = restored["one"]
    other, _ = inference.make_generator(family, R(13, batch_size=5, steps=STEPS))(state, seed=4)
    assert np.mean(other == got["one"]) < 0.9


def test_sample_cli_restores_the_fsdp_checkpoint_on_one_device(fsdp_run, restored, tmp_path):
    """sample.py (one CPU device, the config's default mesh) reads the checkpoint the
    8-device FSDP mesh wrote, and draws what the library draws for the seed."""
    env = os.environ.copy()
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    out = tmp_path / "samples.npz"
    proc = cli_zygote.run(
        "sample.py", f"--config={TINY}", f"--workdir={fsdp_run}", "--num_samples=6",
        "--batch_size=4", f"--steps={STEPS}", "--seed=2", f"--out={out}", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    written = np.load(out)
    assert int(written["step"]) == 1
    family, state = restored["fsdp8"]
    expected, _ = inference.make_generator(family, R(6, batch_size=4, steps=STEPS))(state, seed=2)
    assert np.abs(written["images"].astype(int) - expected.astype(int)).max() <= 1


def test_evaluate_restores_the_fsdp_checkpoint_onto_an_fsdp_mesh(fsdp_run):
    """eval_hook.evaluate (what evaluate.py runs) samples the FSDP checkpoint on an 8-device
    FSDP mesh (12 samples, one batch padded to 16) as on one device."""
    reports = {}
    for name, mesh, devices in (("one", None, jax.devices()[:1]),
                                ("fsdp8", FSDP_2X4, jax.devices()[:8])):
        config = _config(mesh)
        config.sampling.steps = STEPS
        reports[name] = eval_hook.evaluate(config, fsdp_run, which=("cs",), num_samples=12,
                                        devices=devices)
    one, fsdp8 = reports["one"], reports["fsdp8"]
    assert one["samples"]["step"] == fsdp8["samples"]["step"] == 1
    assert sum(fsdp8["model"]["class_counts"]) == 12
    assert fsdp8["model"]["class_counts"] == one["model"]["class_counts"]
    assert fsdp8["model"]["classifier_score"] == pytest.approx(
        one["model"]["classifier_score"], rel=1e-3)
