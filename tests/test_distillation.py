"""The distillation families end to end at tiny sizes (training/families/consistency.py,
progressive.py and teacher.py): configs/digits_cd.py and digits_pd.py distil one tiny
v-prediction teacher (trained here in-process), configs/digits_ct.py trains from scratch;
each trains through the loop, checkpoints, resumes exactly (the train state's `aux`, the
teacher's restore, PD's hand-over between rounds) and samples through sample.py; the
bad-input refusals are one line each."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import edm, progressive
from errors import RequestError, UserError
from tests.configs import tiny_distill
from tests.resume_runs import straight_and_resumed
from tests.test_cli import _run
from training import inference, loop
from training.families import get_family
from training.families import teacher as teachers
from training.families.request import SampleRequest as R

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny v-prediction digits VP run (one step): the teacher of the distillation tests."""
    workdir = tmp_path_factory.mktemp("teacher")
    config = tiny_distill.get_config("teacher")
    config.training.snapshot_sampling = False
    loop.run(config, workdir, devices=ONE_DEVICE)
    return workdir


def _config(kind, teacher_dir=None):
    config = tiny_distill.get_config(kind)
    if teacher_dir is not None:
        config.distill.teacher_workdir = str(teacher_dir)
    return config


def _resumed_exactly(config, root):
    """Trains 2 steps straight and 1 + 1 resumed; asserts every leaf (parameters, EMA,
    target network, optimiser, step, key) is equal; returns the resumed workdir."""
    straight_and_resumed(config, root, ONE_DEVICE, n_iters=2, stop_at=1)
    leaves = []
    for name in ("straight", "resumed"):
        _, state, step = inference.restore_latest(config, root / name, devices=ONE_DEVICE)
        assert step == 2
        leaves.append(jax.tree.leaves(jax.device_get(state)))
    assert len(leaves[0]) == len(leaves[1])
    for a, b in zip(*leaves, strict=True):
        np.testing.assert_array_equal(a, b)
    return root / "resumed"


@pytest.fixture(scope="module")
def cd_run(teacher, tmp_path_factory):
    config = _config("cd", teacher)
    return config, _resumed_exactly(config, tmp_path_factory.mktemp("cd"))


def test_distillation_samples_through_sample_py_in_the_steps_asked(cd_run, tmp_path):
    _, workdir = cd_run
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--workdir={workdir}", "--num_samples=3", "--steps=2",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (3, 8, 8, 1) and npz["images"].dtype == np.uint8
        assert int(npz["nfe"]) == 2 and str(npz["sampler"]) == "consistency"
    assert json.loads((workdir / "config.json").read_text())["distill"]["teacher_workdir"]


def test_named_sampling_levels_set_where_a_draw_of_that_many_steps_goes(cd_run):
    """consistency.sampling_levels is a sampling setting: it applies to a trained run."""
    config, workdir = cd_run
    draws = {}
    for levels in ("", "0,2", "0,1"):  # the tiny grid has 4 intervals: level 2 is the default
        config = config.copy_and_resolve_references()
        config.consistency.sampling_levels = levels
        family, state, _ = inference.restore_latest(config, workdir, devices=ONE_DEVICE)
        draws[levels], nfe = inference.generate(family, state, R(3, steps=2, seed=5))
        assert nfe == 2
    # The samples file records the levels a draw went through.
    assert family.sampler_name(R(3, steps=2)) == "consistency (levels 0,1)"
    assert family.sampler_name(R(3, steps=3)) == "consistency"
    np.testing.assert_array_equal(draws["0,2"], draws[""])
    assert not np.array_equal(draws["0,1"], draws[""])
    config.consistency.sampling_levels = "0,4"
    with pytest.raises(UserError, match=r"^consistency.sampling_levels: '0,4' must stay "
                                        r"below 4 \(sigma_min"):
        get_family(config)


@pytest.fixture(scope="module")
def ct_run(tmp_path_factory):
    config = _config("ct")
    return config, _resumed_exactly(config, tmp_path_factory.mktemp("ct"))


def test_consistency_training_has_itself_as_target_and_samples_through_sample_py(
        ct_run, tmp_path):
    """Its curriculum is a function of the step (tests/test_consistency.py)."""
    config, workdir = ct_run
    _, state, _ = inference.restore_latest(config, workdir, devices=ONE_DEVICE)
    # consistency.target_ema = 0: the target network is the student itself.
    for a, b in zip(jax.tree.leaves(state.aux), jax.tree.leaves(state.params), strict=True):
        np.testing.assert_array_equal(a, b)
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--workdir={workdir}", "--num_samples=4", "--steps=3",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert npz["images"].shape == (4, 8, 8, 1) and int(npz["nfe"]) == 3


@pytest.mark.parametrize("request_, message", [
    (R(2, steps=9), "--steps 9 is above what this consistency model supports: at most 8"),
    (R(2, sampler="pc"), "--sampler 'pc': a consistency model samples with 'consistency'"),
    (R(2, guidance_scale=1.0), "--guidance_scale do(es) not apply"),
])
def test_what_a_consistency_model_cannot_draw_is_one_line(request_, message):
    family = get_family(_config("ct"))
    with pytest.raises(RequestError) as err:
        family.accepts(request_)
    assert message in str(err.value) and "\n" not in str(err.value)


def _teacher_dir(tmp_path, **changes):
    """A workdir holding only the config.json of a tiny teacher with `changes`."""
    config = tiny_distill.get_config("teacher")
    for dotted, value in changes.items():
        section, key = dotted.split("__")
        config[section][key] = value
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    return tmp_path


@pytest.mark.parametrize("changes, message", [
    ({"data__image_size": 16}, "data of another shape or range than the student's (teacher "
                               "vs student: data.image_size=16 vs 8)"),
    ({"training__sde": "subvpsde"}, "another SDE than the student's (teacher vs student: "
                                    "training.sde='subvpsde' vs 'vpsde')"),
    ({"model__family": "vae"}, "is model.family='vae'; a teacher is a score-SDE diffusion run"),
])
def test_a_teacher_of_another_data_shape_or_sde_is_one_line(tmp_path, changes, message):
    family = get_family(_config("cd", _teacher_dir(tmp_path, **changes)))
    with pytest.raises(UserError) as err:
        family.prepare_training()
    assert message in str(err.value) and "\n" not in str(err.value)


def test_distillation_without_a_teacher_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"needs a teacher: set distill\.teacher_workdir") as err:
        get_family(_config("cd", ""))
    assert "\n" not in str(err.value)
    family = get_family(_config("cd", tmp_path))
    with pytest.raises(UserError, match=r"holds no config\.json: train the teacher"):
        family.prepare_training()
    ct = _config("ct")
    ct.distill.teacher_workdir = str(tmp_path)
    with pytest.raises(UserError, match="learns from the data alone"):
        get_family(ct)


@pytest.fixture(scope="module")
def pd_run(teacher, tmp_path_factory):
    """Two steps: 4 DDIM steps halved to 2 (step 1), then to 1 (step 2), straight and
    resumed from step 1, the hand-over between the rounds."""
    config = _config("pd", teacher)
    return config, _resumed_exactly(config, tmp_path_factory.mktemp("pd"))


def test_progressive_distillation_hands_each_round_its_students_weights(pd_run, tmp_path):
    config, workdir = pd_run
    _, state, _ = inference.restore_latest(config, workdir, devices=ONE_DEVICE)
    params, aux = (jax.tree.leaves(jax.device_get(t)) for t in (state.params, state.aux))
    start = jax.tree.leaves(teachers.restore(config, "test").params)
    # Step 1 ended round 0: its student became round 1's teacher; step 2 trained on.
    assert any(not np.array_equal(a, b) for a, b in zip(aux, start, strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(aux, params, strict=True))
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--workdir={workdir}", "--num_samples=3", "--steps=2",
                f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    with np.load(out) as npz:
        assert int(npz["nfe"]) == 2 and str(npz["sampler"]) == "ddim"


def test_a_student_on_the_targets_of_a_network_teacher_matches_its_2n_steps(teacher):
    """The target construction on a tiny network: a student predicting the targets
    exactly samples in N steps the teacher's 2N-step samples from the same noise."""
    config = _config("pd", teacher)
    teacher_net = teachers.restore(config, "test")
    score_fn = teacher_net.score_fn()
    sde, shape, key = teacher_net.family.sde, (4, 8, 8, 1), jax.random.PRNGKey(0)

    def student(x, t):
        x_tilde = progressive.distillation_target(sde, score_fn, x, t, *progressive.step_times(
            sde, t, 2))
        alpha = sde.marginal_scale(t)[:, None, None, None]
        return (alpha * x_tilde - x) / sde.marginal_std(t)[:, None, None, None] ** 2

    ours = jax.jit(lambda k: progressive.ddim_sample(sde, student, k, shape, 2))(key)
    theirs = jax.jit(lambda k: progressive.ddim_sample(sde, score_fn, k, shape, 4))(key)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("request_, message", [
    (R(2, steps=3), "--steps 3 is not a power of two"),
    (R(2, steps=4), "--steps 4 is outside what this student supports: 1 to 2 steps"),
    (R(2, sampler="heun"), "--sampler 'heun': a progressively distilled student samples "
                           "with 'ddim' only"),
])
def test_what_a_progressive_student_cannot_draw_is_one_line(request_, message):
    family = get_family(_config("pd", "/nonexistent"))
    with pytest.raises(RequestError) as err:
        family.accepts(request_)
    assert message in str(err.value) and "\n" not in str(err.value)


def _denoiser_cd(teacher_dir):
    """configs/digits_cd.py: read as a denoiser, the tiny v teacher's own network."""
    config = _config("cd", teacher_dir)
    assert config.consistency.parametrization == "denoiser"
    assert config.model.preconditioning == "v"
    return config


def test_a_denoiser_read_student_starts_as_its_teacher_one_step_ddim(teacher):
    family = get_family(_denoiser_cd(teacher))
    family.prepare_training()
    state = family.init_state(jax.random.PRNGKey(0))
    start = jax.tree.leaves(family.teacher.params)
    for tree in (state.params, state.ema_params, state.aux):
        for a, b in zip(jax.tree.leaves(tree), start, strict=True):
            np.testing.assert_array_equal(a, b)
    # At step 0 f is the teacher's Euler step from sigma to sigma_min.
    x = 3.0 * jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 1))
    sigma = jnp.full((4,), 3.0)
    d = edm.denoiser(family.sde, family.teacher.score_fn())(x, sigma)
    ratio = family.config.consistency.sigma_min / 3.0
    np.testing.assert_allclose(family.consistency_fn(state.params)(x, sigma),
                               ratio * x + (1 - ratio) * d, rtol=1e-5, atol=1e-5)
    new, metrics = jax.jit(family.train_step)(state, {"image": jnp.clip(x, -1, 1)})
    assert np.isfinite(float(metrics["loss"])) and int(new.step) == 1


def test_a_parametrisation_that_cannot_read_the_network_is_one_line(teacher):
    config = _denoiser_cd(teacher)
    config.consistency.parametrization = "edm"
    with pytest.raises(UserError) as err:
        get_family(config)
    assert "consistency.parametrization='edm' has its own" in str(err.value)
    assert "\n" not in str(err.value)
    config = _denoiser_cd(teacher)
    config.model.nf = 16
    with pytest.raises(UserError) as err:
        get_family(config).prepare_training()
    assert "another network than the student, which starts as the teacher: model.nf=8" \
        in str(err.value)
    config.consistency.parametrization = "x0"
    with pytest.raises(UserError, match=r"consistency.parametrization='x0' is not one of "
                                        r"\['denoiser', 'edm'\]"):
        get_family(config)


def test_a_progressive_teacher_of_another_network_is_one_line(teacher):
    config = _config("pd", teacher)
    config.model.nf = 16
    with pytest.raises(UserError) as err:
        get_family(config).prepare_training()
    assert "another network than the student, which starts as the teacher: model.nf=8" \
        in str(err.value) and "\n" not in str(err.value)
    config = _config("pd", "")
    with pytest.raises(UserError, match="progressive distillation needs a teacher"):
        get_family(config)
