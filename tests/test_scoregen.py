"""The notebook API (scoregen.py): a workdir alone loads a run, `sample` takes the sampling
options as keywords and matches inference.generate, `log_likelihood` is the
probability-flow likelihood of 8-bit images in nats, and bad input is one UserError."""

import math

import jax
import numpy as np
import pytest

import scoregen
from diffusion.likelihood import bits_per_dim as density_bits_per_dim
from errors import UserError
from evaluation.bpd import likelihood_options
from tests.configs import tiny, tiny_families
from training import inference, loop
from training.families.request import SampleRequest

ONE_DEVICE = jax.devices()[:1]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("digits")
    config = tiny.get_config()
    config.training.snapshot_sampling = False
    loop.run(config, workdir, devices=ONE_DEVICE)
    return workdir


@pytest.fixture(scope="module")
def model(workdir):
    return scoregen.load(workdir, devices=ONE_DEVICE)


def test_load_reads_the_run_from_its_workdir_alone(model, workdir):
    assert model.step == 2 and model.family.data_shape == (8, 8, 1)
    assert model.config.model.nf == 8  # the run's config.json, not the defaults
    assert repr(model) == (f"scoregen.Model({str(workdir)!r}, family='diffusion', step=2, "
                           "data_shape=(8, 8, 1))")


def test_sample_takes_the_sampling_options_and_matches_generate(model):
    images = model.sample(5, sampler="euler_maruyama", steps=2, seed=3)
    assert images.shape == (5, 8, 8, 1) and images.dtype == np.uint8
    np.testing.assert_array_equal(model.sample(5, sampler="euler_maruyama", steps=2, seed=3),
                                  images)
    request = SampleRequest(5, batch_size=5, sampler="euler_maruyama", steps=2, seed=3)
    expected, nfe = inference.generate(model.family, model.state, request)
    np.testing.assert_array_equal(images, expected)
    assert nfe == 3
    assert not np.array_equal(model.sample(5, sampler="euler_maruyama", steps=2, seed=4),
                              images)


def test_log_likelihood_is_the_probability_flow_likelihood_of_the_8_bit_images(model):
    images = np.random.default_rng(0).integers(0, 256, (3, 8, 8, 1), dtype=np.uint8)
    nats = model.log_likelihood(images, seed=1)
    assert nats.shape == (3,) and np.all(np.isfinite(nats))
    np.testing.assert_array_equal(model.log_likelihood(images, seed=1), nats)
    # The same dequantized images through the family's own likelihood: the density of
    # the centred data, whose bits/dim carry the 7-bit offset of evaluate.py's.
    u = np.random.default_rng(1).random(images.shape, np.float32)
    x = 2.0 * (images.astype(np.float32) + u) / 256.0 - 1.0
    fn = model.family.make_log_likelihood(**likelihood_options(model.config))
    logp, _ = fn(model.family.sample_params(model.state),
                 jax.random.fold_in(jax.random.PRNGKey(1), 0), x)
    expected = np.asarray(density_bits_per_dim(logp, (8, 8, 1), centered=True))
    np.testing.assert_allclose(model.bits_per_dim(images, seed=1), expected, rtol=1e-5)
    np.testing.assert_allclose(model.bits_per_dim(images, seed=1),
                               -nats / (64 * math.log(2.0)), rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda m: m.log_likelihood(np.zeros((2, 8, 8, 3), np.uint8)),
     r"^log_likelihood takes images of shape \(N, 8, 8, 1\), got \(2, 8, 8, 3\)$"),
    (lambda m: m.log_likelihood(np.zeros((2, 8, 8, 1), np.float32)),
     r"^log_likelihood takes uint8 images \(0\.\.255\), got float32$"),
    (lambda m: m.sample(4, sampler_name="ode"),
     r"^sample\(\) takes no option 'sampler_name'; it takes autoguidance_scale, "),
    (lambda m: m.sample(4, sampler="nope"), r"sampler"),
    (lambda m: m.sample(4, guidance_scale=2.0), r"needs a class-conditional model"),
])
def test_bad_input_is_one_user_error(model, call, message):
    with pytest.raises(UserError, match=message) as err:
        call(model)
    assert "\n" not in str(err.value)


def test_a_workdir_without_a_run_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"^no config.json in .*: not a training run's "
                                        r"workdir \(train.py writes one\)$"):
        scoregen.load(tmp_path)


def test_a_model_without_a_likelihood_refuses_it_in_one_line(tmp_path):
    config = tiny_families.get_config("gan")
    config.training.snapshot_sampling = False
    loop.run(config, tmp_path, devices=ONE_DEVICE)
    gan = scoregen.load(tmp_path, devices=ONE_DEVICE)
    assert gan.sample(3).shape == (3, 8, 8, 1)
    with pytest.raises(UserError, match=r"^bits/dim needs a likelihood; model family 'gan' "
                                        r"has none$"):
        gan.log_likelihood(np.zeros((2, 8, 8, 1), np.uint8))
