"""Gradient accumulation: k micro-batches make the same optimizer update as the full batch."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from errors import UserError
from tests.configs import tiny, tiny_families, tiny_guided
from training import accumulate, loop
from training.families import get_family


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.training.batch_size, config.data.image_size
    return {"image": jnp.asarray(rng.uniform(-1, 1, (b, s, s, 1)), jnp.float32),
            "label": jnp.asarray(rng.integers(0, 10, b), jnp.int32)}


def test_split_takes_strided_rows_and_merge_undoes_it():
    x = jnp.arange(12).reshape(6, 2)
    micro = accumulate.split({"x": x}, 3)["x"]
    assert micro.shape == (3, 2, 2)
    np.testing.assert_array_equal(micro[1], x[1::3])
    np.testing.assert_array_equal(accumulate.merge(micro), x)


@pytest.fixture(scope="module")
def full_and_accumulated():
    """One train step of the same state and batch, whole and in 4 micro-batches."""
    results = {}
    for steps in (1, 4):
        config = tiny.get_config("vpsde")
        config.model.dropout = 0.0  # dropout masks are drawn per micro-batch
        config.model.num_classes = 10
        config.training.class_dropout = 0.2  # labels are dropped for the whole batch
        config.training.grad_accum_steps = steps
        family = get_family(config)
        state = family.init_state(jax.random.PRNGKey(0))
        results[steps] = jax.jit(family.train_step)(state, _batch(config))
    return results


def test_accumulated_update_equals_the_full_batch_update(full_and_accumulated):
    (full, full_metrics), (acc, acc_metrics) = full_and_accumulated[1], full_and_accumulated[4]
    np.testing.assert_allclose(acc_metrics["loss"], full_metrics["loss"], rtol=1e-5)
    np.testing.assert_allclose(acc_metrics["grad_norm"], full_metrics["grad_norm"], rtol=1e-4)
    for a, f in zip(jax.tree.leaves(acc.params), jax.tree.leaves(full.params), strict=True):
        np.testing.assert_allclose(a, f, rtol=1e-4, atol=1e-6)
    for a, f in zip(jax.tree.leaves(acc.ema_params), jax.tree.leaves(full.ema_params),
                    strict=True):
        np.testing.assert_allclose(a, f, rtol=1e-4, atol=1e-6)


def test_step_and_schedule_count_optimizer_updates_not_micro_batches(full_and_accumulated):
    acc, metrics = full_and_accumulated[4]
    assert int(acc.step) == 1
    assert float(metrics["lr"]) == float(full_and_accumulated[1][1]["lr"])


def test_a_run_with_accumulation_checkpoints_at_optimizer_steps_and_resumes(tmp_path):
    config = tiny.get_config("vpsde")
    config.training.grad_accum_steps = 2
    config.training.snapshot_sampling = False
    one_device = jax.devices()[:1]  # the micro-batches' sharding is the next test's
    loop.run(config, tmp_path, devices=one_device)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    config.training.n_iters = 3
    assert loop.run(config, tmp_path, devices=one_device)["step"] == 3


@pytest.mark.parametrize("make_config", [lambda: tiny_families.get_config("vae"),
                                         lambda: tiny_guided.get_config("classifier")],
                         ids=["vae", "noise_classifier"])
def test_other_single_network_families_accumulate(make_config):
    config = make_config()
    config.training.grad_accum_steps = 2
    fam = get_family(config)
    state, metrics = jax.jit(fam.train_step)(fam.init_state(jax.random.PRNGKey(0)),
                                             _batch(config))
    assert int(state.step) == 1
    assert all(np.isfinite(v) and np.shape(v) == () for v in jax.device_get(metrics).values())


@pytest.mark.parametrize("batch, steps, message", [
    (16, 3, "training.batch_size=16 does not split into training.grad_accum_steps=3 "
            "micro-batches over 1 devices (it must be a multiple of 3)"),
    (16, 0, "training.grad_accum_steps must be a positive int, got 0"),
])
def test_a_batch_that_does_not_split_is_refused_by_name(batch, steps, message):
    config = tiny.get_config("vpsde")
    config.training.batch_size, config.training.grad_accum_steps = batch, steps
    with pytest.raises(UserError) as err:
        get_family(config)
    assert str(err.value) == message


def test_micro_batches_must_divide_over_the_devices_before_anything_is_written(tmp_path):
    config = tiny.get_config("vpsde")
    config.training.grad_accum_steps = 4  # 16 / 4 = 4 rows per micro-batch, 8 devices
    with pytest.raises(UserError, match=r"over 8 devices \(it must be a multiple of 32\)"):
        loop.run(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_a_gan_refuses_accumulation():
    config = tiny_families.get_config("gan")
    config.training.grad_accum_steps = 2
    with pytest.raises(UserError, match=re.escape("grad_accum_steps=2 is not available "
                                                  "for model.family='gan'")):
        get_family(config)
