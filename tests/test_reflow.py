"""Reflow (diffusion/reflow.py, data/pairs_file.py, training/reflow_pairs.py,
training/families/reflow.py, reflow.py) against closed forms and end to end.

For data N(mean, std^2 I) on the linear path the probability flow maps each noise z to
mean + std z: the pairs are known exactly, and the reflowed velocity on them, ((1 - std)
z - mean), is straight, so one Euler step draws the data. End to end, a tiny digits_rf run
draws pairs through reflow.py; a tiny digits_reflow student starts as that run, trains on
the pairs, resumes exactly, samples through sample.py and teaches the next reflow; bad
input is one line each."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from data import pairs_file
from diffusion import flows, reflow, sampling, sde_lib
from errors import RequestError, UserError
from tests.configs import tiny_reflow
from tests.resume_runs import straight_and_resumed
from tests.test_cli import _error_line, _run
from training import inference, loop
from training.families import get_family
from training.reflow_pairs import PairsRequest, check_run, draw_pairs

MEAN = np.array([1.0, -2.0], np.float32)
STD = 0.5
SDE = sde_lib.LinearPath()
ONE_DEVICE = jax.devices()[:1]


def _gaussian_score():
    velocity = flows.gaussian_velocity_fn(SDE, MEAN, STD)
    return lambda x, t: flows.score_from_velocity(SDE, velocity(x, t), x, t)


def _straight_score():
    """The reflowed Gaussian's velocity z - x0 on the pairs (mean + std z, z), as a score."""
    def velocity(x, t):
        t = t[:, None]
        z = (x - (1 - t) * MEAN) / ((1 - t) * STD + t)
        return (1 - STD) * z - MEAN
    return lambda x, t: flows.score_from_velocity(SDE, velocity(x, t), x, t)


@pytest.mark.parametrize("name, steps", [("flow_euler", 400), ("flow_heun", 40), ("ode", None)])
def test_pairs_are_the_noise_each_sampler_started_from_and_its_image(name, steps):
    shape = (256, 2)
    sampler = sampling.get_sampler(name, SDE, shape, steps=steps, eps=1e-3, denoise=True)
    draw = reflow.pair_drawer(SDE, shape, name, sampler)
    z, x0, nfe = jax.jit(lambda key: draw(key, _gaussian_score()))(jax.random.PRNGKey(3))
    np.testing.assert_allclose(z, SDE.prior_sampling(jax.random.PRNGKey(3), shape), atol=1e-6)
    np.testing.assert_allclose(x0, MEAN + STD * z, atol=2e-2)
    assert int(nfe) > 1


def test_a_stochastic_sampler_is_refused_by_name():
    with pytest.raises(ValueError, match="sampler 'pc' is stochastic: reflow pairs need a "
                                         "deterministic one"):
        reflow.check_deterministic("pc")


def test_the_paired_loss_vanishes_on_the_straight_velocity_of_coupled_pairs():
    loss_fn = reflow.paired_flow_matching_loss(SDE, reduce_mean=False, eps=1e-3)
    z = jax.random.normal(jax.random.PRNGKey(0), (4096, 2))
    x0 = MEAN + STD * z
    key = jax.random.PRNGKey(1)
    coupled = float(loss_fn(_straight_score(), key, x0, z))
    independent = float(loss_fn(_straight_score(), key, x0, jnp.roll(z, 1, axis=0)))
    assert coupled < 1e-6 and independent > 0.1


def test_one_euler_step_of_the_straight_velocity_draws_the_data():
    sampler = sampling.get_sampler("flow_euler", SDE, (512, 2), steps=1, eps=1e-3,
                                   denoise=False)
    draw = reflow.pair_drawer(SDE, (512, 2), "flow_euler", sampler)
    z, x0, nfe = draw(jax.random.PRNGKey(2), _straight_score())
    np.testing.assert_allclose(x0, MEAN + STD * z, atol=1e-2)
    assert int(nfe) == 1


def _pairs(path, shape=(8, 8, 1), sde="linear_path", n=3, **changes):
    provenance = {"teacher_workdir": "runs/x", "teacher_step": 7, "sde": sde,
                  "sampler": "flow_heun", "steps": 25, "nfe": 51, "seed": 0}
    noise = np.zeros((n, *shape), np.float32)
    pairs_file.save_pairs(path, noise, noise + 1, {**provenance, **changes})
    return path


def test_a_pairs_file_round_trips_with_its_provenance(tmp_path):
    pairs = pairs_file.load_pairs(_pairs(tmp_path / "p.npz"), (8, 8, 1), "linear_path")
    assert len(pairs) == 3 and pairs.image.dtype == np.float32
    assert pairs.provenance["nfe"] == 51 and pairs.provenance["sampler"] == "flow_heun"
    assert not list(tmp_path.glob("*.tmp.npz"))


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "does not exist: draw the pairs first (python reflow.py"),
    (lambda p: _pairs(p, shape=(16, 16, 1)), "noise has shape (3, 16, 16, 1); this model's "
                                             "data are (N, 8, 8, 1)"),
    (lambda p: _pairs(p, sde="vpsde"), "was drawn by a model on training.sde='vpsde'; this "
                                       "run is training.sde='linear_path'"),
    (lambda p: np.savez(p, image=np.zeros((2, 8, 8, 1))) or p,
     "is not a reflow pairs file: it has no 'noise'"),
    (lambda p: p.write_bytes(b"\x89PNG....") and p, "is a PNG image"),
])
def test_a_bad_pairs_file_is_one_line(tmp_path, make, message):
    path = make(tmp_path / "p.npz")
    with pytest.raises(UserError) as err:
        pairs_file.load_pairs(path, (8, 8, 1), "linear_path")
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def rf_run(tmp_path_factory):
    """A tiny digits_rf run (one step): the teacher."""
    workdir = tmp_path_factory.mktemp("rf")
    config = tiny_reflow.get_config("rf")
    config.training.snapshot_sampling = False
    loop.run(config, workdir, devices=ONE_DEVICE)
    return workdir


@pytest.fixture(scope="module")
def pairs(rf_run):
    """Six pairs through reflow.py, in batches of four (the last one cut)."""
    out = rf_run / "pairs.npz"
    proc = _run("reflow.py", f"--workdir={rf_run}", "--num_pairs=6", "--batch_size=4",
                "--steps=2", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    assert "Wrote 6 reflow pairs (flow_heun, 5 evaluations a pair" in proc.stdout
    return out


def _student(rf_run, pairs):
    config = tiny_reflow.get_config("reflow")
    config.reflow.pairs, config.distill.teacher_workdir = str(pairs), str(rf_run)
    return config


def test_reflow_py_writes_the_runs_own_pairs(rf_run, pairs):
    loaded = pairs_file.load_pairs(pairs, (8, 8, 1), "linear_path")
    assert loaded.noise.shape == loaded.image.shape == (6, 8, 8, 1)
    assert loaded.provenance["teacher_step"] == 1 and loaded.provenance["steps"] == 2
    # The same draw in-process: the same keys, the same pairs.
    config = tiny_reflow.get_config("rf")
    noise, image, _ = draw_pairs(config, str(rf_run), PairsRequest(6, batch_size=4, steps=2))
    np.testing.assert_allclose(noise, loaded.noise)
    np.testing.assert_allclose(image, loaded.image, atol=1e-6)


def test_the_student_starts_as_its_teacher_trains_resumes_and_samples(rf_run, pairs, tmp_path):
    config = _student(rf_run, pairs)
    family = get_family(config)
    family.prepare_training()
    start = family.init_state(jax.random.PRNGKey(0))
    _, teacher, _ = inference.restore_latest(tiny_reflow.get_config("rf"), rf_run,
                                             devices=ONE_DEVICE)
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(teacher.ema_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)
    straight_and_resumed(config, tmp_path, ONE_DEVICE, n_iters=2, stop_at=1)
    states = [jax.tree.leaves(jax.device_get(inference.restore_latest(
        config, tmp_path / name, devices=ONE_DEVICE)[1])) for name in ("straight", "resumed")]
    for a, b in zip(*states, strict=True):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--workdir={tmp_path / 'resumed'}", "--num_samples=3",
                "--steps=1", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (3, 8, 8, 1) and int(npz["nfe"]) == 2
    # The reflowed run teaches the next reflow (3-rectified flow): it starts as its weights.
    config.distill.teacher_workdir = str(tmp_path / "resumed")
    third = get_family(config)
    third.prepare_training()
    start = third.init_state(jax.random.PRNGKey(0))
    _, second, _ = inference.restore_latest(config, tmp_path / "resumed", devices=ONE_DEVICE)
    for a, b in zip(jax.tree.leaves(start.params), jax.tree.leaves(second.ema_params),
                    strict=True):
        np.testing.assert_array_equal(a, b)


def test_reflow_py_refuses_a_stochastic_sampler_in_one_line(rf_run, tmp_path):
    proc = _run("reflow.py", f"--workdir={rf_run}", "--sampler=euler_maruyama",
                f"--out={tmp_path / 'p.npz'}")
    assert "sampler 'euler_maruyama' is stochastic" in _error_line(proc, 2)
    assert not (tmp_path / "p.npz").exists()


def test_pairs_come_from_unconditional_flow_or_diffusion_runs_only():
    config = tiny_reflow.get_config("rf")
    config.model.family = "vae"
    with pytest.raises(RequestError, match=r"is a model\.family='vae' run; reflow pairs come"):
        check_run(config, "runs/v")
    with pytest.raises(RequestError, match="--num_pairs must be a positive integer"):
        PairsRequest(0).check()


def test_a_student_without_pairs_or_of_another_network_is_one_line(rf_run, pairs):
    config = tiny_reflow.get_config("reflow")
    config.reflow.pairs = ""
    with pytest.raises(UserError, match=r"trains on pairs: set reflow\.pairs"):
        get_family(config)
    config = _student(rf_run, pairs)
    config.model.nf = 16
    with pytest.raises(UserError) as err:
        get_family(config).prepare_training()
    assert "is another network than the student" in str(err.value)
    assert "model.nf=8 (teacher) vs 16" in str(err.value) and "\n" not in str(err.value)
