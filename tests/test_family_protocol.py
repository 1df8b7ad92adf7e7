"""The Family protocol, declared capabilities and the one validation point of SampleRequest."""

from pathlib import Path

import numpy as np
import pytest

from errors import UserError
from tests import cli_zygote
from tests.configs import tiny, tiny_families
from training.families import FAMILIES, base, get_family
from training.families.request import SampleRequest

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "configs" / "tiny.py"


def test_every_family_class_declares_the_protocol_members():
    for name, cls in FAMILIES.items():
        for member in ("init_state", "train_step", "eval_step", "sample_params", "make_sampler",
                       "sampler_name", "to_unit_range", "prepare_training", "accepts",
                       "is_image_data"):
            assert hasattr(cls, member), (name, member)


@pytest.mark.parametrize("spec", ["diffusion", "gan", "vae"])
def test_built_families_satisfy_the_protocol_with_known_capabilities(spec):
    config = tiny.get_config() if spec == "diffusion" else tiny_families.get_config(spec)
    family = get_family(config)
    assert isinstance(family, base.Family)
    assert isinstance(family.capabilities, frozenset) and base.SAMPLE in family.capabilities
    assert family.capabilities <= set(base.CAPABILITIES)
    family.prepare_training()  # every family has it
    assert isinstance(family.sampler_name(SampleRequest(2)), str)


def test_a_gan_refuses_what_it_cannot_do_in_one_line():
    gan = get_family(tiny_families.get_config("gan"))
    assert gan.capabilities == {base.SAMPLE}
    for request, flag in [(SampleRequest(4, steps=3), "--steps"),
                          (SampleRequest(4, guidance_scale=1.0), "--guidance_scale"),
                          (SampleRequest(4, task="colorize", image=np.zeros((8, 8, 1))),
                           "task 'colorize'"),
                          (SampleRequest(4, classifier_scale=1.0), "classifier guidance")]:
        with pytest.raises(UserError, match=f"one generator call: {flag}") as err:
            gan.accepts(request)
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("fields, message", [
    ({"num_samples": 0}, "--num_samples must be positive, got 0"),
    ({"batch_size": -1}, "--batch_size must be positive, got -1"),
    ({"steps": 0}, "--steps must be positive, got 0"),
    ({"steps": 2.5}, "--steps must be a positive int"),
    ({"guidance_scale": float("nan")}, "--guidance_scale must be >= 0"),
    ({"classifier_scale": -1.0}, "--classifier_scale must be >= 0, got -1.0"),
    ({"task": "paint"}, "unknown sampling task 'paint'"),
    ({"task": "sdedit", "edit_strength": 1.5, "image": np.zeros((8, 8, 1))},
     r"--edit_strength must lie in \(0, 1\], got 1.5"),
    ({"task": "inpaint", "image": np.zeros((8, 8, 1))}, "inpainting needs a mask"),
    ({"task": "colorize"}, "task 'colorize' needs an image"),
    ({"edit_strength": 0.5}, "--edit_strength goes with SDEdit only"),
])
def test_a_bad_request_fails_when_it_is_built(fields, message):
    fields = {"num_samples": 4, **fields}
    with pytest.raises(UserError, match=message):
        SampleRequest(**fields)


def test_the_request_records_itself_and_ignores_its_arrays_in_equality():
    a = SampleRequest(3, task="sdedit", edit_strength=0.5, image=np.zeros((8, 8, 1)))
    b = SampleRequest(3, task="sdedit", edit_strength=0.5, image=np.ones((8, 8, 1)))
    assert a == b and hash(a) == hash(b)
    record = a.record()
    assert str(record["task"]) == "sdedit" and float(record["edit_strength"]) == 0.5
    assert "image" not in record and a.with_batch(8).batch == 8


def test_sample_py_flags_reach_the_request_before_any_checkpoint_is_read(tmp_path):
    proc = cli_zygote.run("sample.py", f"--config={TINY}", f"--workdir={tmp_path}",
                          "--classifier_scale=-1", "--classifier_workdir=x",
                          f"--classifier_config={TINY}", f"--out={tmp_path / 's.npz'}")
    assert proc.returncode == 2
    assert "--classifier_scale must be >= 0, got -1.0" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "s.npz").exists()
