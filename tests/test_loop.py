"""The training loop: one step per SDE, device-count invariance, exact resume, guards."""

import jax
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from errors import NonFiniteLossError, UserError
from tests.configs import tiny
from tests.resume_runs import straight_and_resumed
from training import loop
from training.checkpoint import Checkpointer
from training.families import diffusion as diffusion_family

# One device unless the test is about devices: the common case, and faster to compile.
ONE_DEVICE = jax.devices()[:1]


def _restored_params(config, workdir, step):
    family_state = jax.eval_shape(
        diffusion_family.DiffusionFamily(config).init_state, jax.random.PRNGKey(0)
    )
    ckpt = Checkpointer(workdir, config)
    state, _ = ckpt.restore(step, family_state)
    ckpt.close()
    return jax.tree.leaves(jax.device_get(state.params))


@pytest.mark.parametrize("sde", ["vpsde", "subvpsde", "vesde"])
def test_one_train_step_per_sde_writes_checkpoint_logs_and_samples(sde, tmp_path):
    config = tiny.get_config(sde)
    config.training.n_iters = 1
    config.training.snapshot_freq = 1
    result = loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert result["step"] == 1
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert np.isfinite(result["eval_loss"])
    assert (tmp_path / "checkpoints" / "1").is_dir()
    assert (tmp_path / "samples" / "step_0000001.png").is_file()
    assert (tmp_path / "config.json").is_file()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert {"loss", "lr", "grad_norm", "eval_loss"} <= set(events.Tags()["scalars"])
    assert "samples" in events.Tags()["images"]


def test_sample_quality_metrics_during_training_go_to_tensorboard_every_eval_freq(tmp_path):
    config = tiny.get_config("vpsde")
    config.training.n_iters = 4
    config.training.eval_freq = 2
    config.training.log_freq = 1
    config.training.snapshot_freq = 4  # one save, at the end: saves are slow
    config.training.snapshot_sampling = False
    config.eval.metrics_during_training = "fd,pr,cs"
    config.eval.num_samples = 70  # FD needs more samples than the 64 feature dimensions
    result = loop.run(config, tmp_path, devices=ONE_DEVICE)
    names = ("eval/fd", "eval/precision", "eval/recall", "eval/classifier_score",
             "eval/class_entropy")
    for name in names:
        assert np.isfinite(result[name]), name
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert set(names) <= set(events.Tags()["scalars"])
    # Training is logged every step, the sample metrics only every eval_freq steps.
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]
    for name in names:
        assert [e.step for e in events.Scalars(name)] == [2, 4], name


def test_too_few_evaluation_samples_for_fd_are_refused_before_training(tmp_path):
    config = tiny.get_config("vpsde")
    config.eval.metrics_during_training = "fd"
    config.eval.num_samples = 32
    with pytest.raises(UserError, match="Fréchet distance needs more samples than feature"):
        loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert not (tmp_path / "checkpoints").exists()


def test_two_dimensional_toy_data_trains_and_snapshots_a_density_picture(tmp_path):
    config = tiny.get_config("toy")
    config.training.n_iters = 1
    config.training.snapshot_freq = 1
    result = loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert np.isfinite(result["loss"])
    picture = tmp_path / "samples" / "step_0000001.png"
    assert picture.is_file()
    from PIL import Image

    assert Image.open(picture).size == (256, 256)


def test_one_and_eight_devices_give_the_same_loss(tmp_path):
    config = tiny.get_config("vpsde")
    config.training.snapshot_sampling = False
    one = loop.run(config, tmp_path / "one", devices=jax.devices()[:1])
    eight = loop.run(config, tmp_path / "eight", devices=jax.devices()[:8])
    assert len(jax.devices()) == 8
    # Step 2's loss depends on step 1's update, so this checks gradients too.
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    np.testing.assert_allclose(one["grad_norm"], eight["grad_norm"], rtol=1e-4)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    # Resuming is the network's business nowhere: the toy MLP keeps the three runs short.
    config = tiny.get_config("toy")
    _, result = straight_and_resumed(config, tmp_path, ONE_DEVICE, n_iters=4, stop_at=2)
    assert result["step"] == 4

    straight = _restored_params(config, tmp_path / "straight", 4)
    resumed = _restored_params(config, tmp_path / "resumed", 4)
    for a, b in zip(straight, resumed, strict=True):
        np.testing.assert_array_equal(a, b)


def test_non_finite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    config = tiny.get_config("toy")
    config.training.snapshot_sampling = False
    config.training.n_iters = 6
    config.training.log_freq = 3
    config.training.snapshot_freq_for_preemption = 2
    honest_step = diffusion_family.DiffusionFamily.train_step

    def diverging_step(self, state, batch):
        new_state, metrics = honest_step(self, state, batch)
        loss = jax.numpy.where(state.step >= 2, jax.numpy.nan, metrics["loss"])
        return new_state, {**metrics, "loss": loss}

    monkeypatch.setattr(diffusion_family.DiffusionFamily, "train_step", diverging_step)
    expected = r"loss became nan at step 3; .*step 2 .* untouched"
    with pytest.raises(NonFiniteLossError, match=expected):
        loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]


def test_fourier_embedding_with_a_vp_sde_is_refused_with_the_reason():
    config = tiny.get_config("vpsde")
    config.model.embedding_type = "fourier"
    with pytest.raises(UserError, match="expects the log-sigma conditioning of a VE SDE"):
        diffusion_family.DiffusionFamily(config)


def test_edm_objective_and_preconditioning_train_and_sample(tmp_path):
    config = tiny.get_config("vpsde")
    config.training.objective = "edm"
    config.model.preconditioning = "edm"
    config.model.sigma_data = 0.75
    config.training.n_iters = 1
    config.training.snapshot_freq = 1
    result = loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert np.isfinite(result["loss"]) and result["loss"] > 0
    assert (tmp_path / "samples" / "step_0000001.png").is_file()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"training.objective": "edm", "training.continuous": False},
         "training.objective / model.preconditioning: objective='edm' is continuous-time"),
        ({"model.preconditioning": "karras"},
         "training.objective / model.preconditioning: unknown preconditioning 'karras'"),
    ],
)
def test_bad_objective_or_preconditioning_is_refused_before_training(overrides, message, tmp_path):
    config = tiny.get_config("vpsde")
    for key, value in overrides.items():
        section, name = key.split(".")
        config[section][name] = value
    with pytest.raises(UserError, match=message):
        loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert not (tmp_path / "checkpoints").exists()
