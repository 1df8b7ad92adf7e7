"""model.family='consistency' (training/families/consistency.py) end to end at tiny sizes:
configs/digits_cd.py distils a tiny teacher (trained here in-process), configs/digits_ct.py
trains from scratch; each trains, checkpoints, resumes exactly (target network included)
and samples (CD through sample.py); the bad-input refusals are one line each."""

import json

import jax
import numpy as np
import pytest

from errors import RequestError, UserError
from tests.configs import tiny, tiny_consistency
from tests.resume_runs import straight_and_resumed
from tests.test_cli import _run
from training import inference, loop
from training.families import get_family
from training.families.request import SampleRequest as R
from training.sample_run import Sources, draw

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A tiny digits VP run (one step): the teacher of the distillation tests."""
    workdir = tmp_path_factory.mktemp("teacher")
    config = tiny.get_config()
    config.training.n_iters = 1
    config.training.snapshot_sampling = False
    loop.run(config, workdir, devices=ONE_DEVICE)
    return workdir


def _config(kind, teacher_dir=None):
    config = tiny_consistency.get_config(kind)
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


def test_consistency_training_resumes_exactly_and_samples(tmp_path):
    config = _config("ct")
    workdir = _resumed_exactly(config, tmp_path)
    samples, record = draw(config, Sources(str(workdir)), R(4, steps=3))
    assert samples.shape == (4, 8, 8, 1) and int(record["nfe"]) == 3


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
    config = tiny.get_config()
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
