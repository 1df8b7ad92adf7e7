"""Configs: every experiment loads and builds its networks at its data's shape, published
hyperparameters, typos are errors."""

import importlib

import pytest

EXPERIMENTS = [
    "digits_vp",
    "digits_subvp",
    "digits_ve",
    "cifar10_ddpmpp_vp",
    "cifar10_ncsnpp_ve",
    "toy_gmm_vp",
]


FAMILY_EXPERIMENTS = {
    "digits_gan": "gan",
    "digits_gan_cond": "gan",
    "cifar10_sngan": "gan",
    "digits_vae": "vae",
    "digits_latent_ae": "vae",
    "cifar10_vae": "vae",
    "digits_latent_vp": "latent_diffusion",
    "digits_noise_classifier": "noise_classifier",
    "digits_discriminator": "noise_classifier",
    "digits_vp_cond": "diffusion",
    "digits_vp_clusters": "diffusion",
    "digits_rf": "diffusion",
    "digits_cd": "consistency",
    "digits_ct": "consistency",
    "digits_pd": "progressive_distillation",
    "digits_reflow": "reflow",
    "digits_ve_edm": "diffusion",
    "digits_v": "diffusion",
}


@pytest.mark.parametrize("name", sorted(FAMILY_EXPERIMENTS))
def test_every_family_experiment_loads_and_sets_only_its_own_settings(name):
    from training.families import check_family_settings

    config = importlib.import_module(f"configs.{name}").get_config()
    assert config.model.family == FAMILY_EXPERIMENTS[name]
    check_family_settings(config)


@pytest.mark.parametrize("name", sorted(EXPERIMENTS + list(FAMILY_EXPERIMENTS)))
def test_default_metrics_ask_a_likelihood_only_of_a_model_that_has_one(name):
    """evaluate.py with no --metrics must run: GANs, latent diffusion and self-conditioned
    diffusion have no bits/dim, and 2-D points get nll in its place."""
    from evaluation import protocol

    config = importlib.import_module(f"configs.{name}").get_config()
    if config.model.family == "noise_classifier":
        return  # a guide: evaluate.py does not measure it
    metrics = protocol.parse_metrics(config.eval.metrics)
    protocol.check_metrics_fit_data(config, metrics)
    has_likelihood = (config.model.family in ("diffusion", "vae")
                      and not config.model.self_condition_clusters)
    assert bool({"bpd", "nll"} & set(metrics)) == has_likelihood
    assert {"fd", "kid", "pr", "cs"} <= set(metrics)


def test_sngan_carries_the_published_hyperparameters():
    from configs import cifar10_sngan

    config = cifar10_sngan.get_config()
    assert (config.model.name, config.model.spectral_norm, config.gan.loss) == (
        "resnet", True, "hinge")
    assert (config.optim.lr, config.optim.beta1, config.optim.beta2) == (2e-4, 0.0, 0.9)
    assert (config.data.image_size, config.data.num_channels) == (32, 3)


def test_a_config_file_loads_by_path_with_its_argument():
    import configs

    config = configs.load("tests/configs/tiny_families.py:vae")
    assert config.model.family == "vae"
    with pytest.raises(ValueError, match="does not exist"):
        configs.load("configs/no_such_config.py")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_loads_with_score_sde_keys(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    for key in (
        "n_iters",
        "batch_size",
        "snapshot_freq",
        "log_freq",
        "sde",
        "continuous",
        "likelihood_weighting",
    ):
        assert key in config.training
    assert config.model.family == "diffusion"


def test_cifar10_configs_carry_the_published_hyperparameters():
    from configs import cifar10_ddpmpp_vp, cifar10_ncsnpp_ve

    vp, ve = cifar10_ddpmpp_vp.get_config(), cifar10_ncsnpp_ve.get_config()
    assert (vp.model.beta_min, vp.model.beta_max, vp.model.num_scales) == (0.1, 20.0, 1000)
    assert (ve.model.sigma_min, ve.model.sigma_max, ve.model.num_scales) == (0.01, 50.0, 1000)
    for config in (vp, ve):
        assert config.optim.lr == 2e-4
        assert config.optim.warmup == 5000
        assert config.optim.grad_clip == 1.0
        assert config.training.batch_size == 128
        assert (config.data.image_size, config.data.num_channels) == (32, 3)
    assert vp.model.ema_rate == 0.9999
    assert ve.model.ema_rate == 0.999
    assert vp.optim.schedule == ve.optim.schedule == "constant"  # score_sde's: no decay
    assert vp.training.sde == "vpsde" and ve.training.sde == "vesde"


def test_a_misspelt_key_is_an_error_that_names_it():
    from configs import digits_vp

    config = digits_vp.get_config()
    with pytest.raises(AttributeError, match=r'n_iter.*Did you mean "n_iters"'):
        config.training.n_iter = 5


# The CIFAR-10 data cannot be prepared offline, so their families cannot be built here:
# their networks are traced abstractly (no parameters allocated) at the data's shape.
def _score_network_output(config):
    import jax.numpy as jnp
    from flax import nnx

    import networks

    size, channels = config.data.image_size, config.data.num_channels
    model = networks.get_model(config, nnx.Rngs(0))
    return model(jnp.zeros((2, size, size, channels)), jnp.ones((2,)))


def _gan_output(config):
    import jax.numpy as jnp
    from flax import nnx

    from networks import gan

    generator, discriminator = gan.from_config(config, nnx.Rngs(0))
    images = generator(jnp.zeros((2, config.model.latent_dim)))
    return images, discriminator(images)


def _vae_output(config):
    import jax.numpy as jnp
    from flax import nnx

    from networks import vae

    size, channels = config.data.image_size, config.data.num_channels
    encoder, decoder = vae.from_config(config, 1, nnx.Rngs(0))  # one parameter a channel
    mean, _ = encoder(jnp.zeros((2, size, size, channels)))
    return mean, decoder(mean)


@pytest.mark.parametrize(("name", "output", "expected"), [
    ("cifar10_ddpmpp_vp", _score_network_output, (2, 32, 32, 3)),
    ("cifar10_ncsnpp_ve", _score_network_output, (2, 32, 32, 3)),
    ("cifar10_sngan", _gan_output, ((2, 32, 32, 3), (2,))),
    ("cifar10_vae", _vae_output, ((2, 8, 8, 4), (2, 32, 32, 3))),
])
def test_every_cifar10_network_builds_at_the_data_shape(name, output, expected):
    import jax

    config = importlib.import_module(f"configs.{name}").get_config()
    shapes = jax.tree.map(lambda s: tuple(s.shape), jax.eval_shape(lambda: output(config)))
    assert shapes == expected


@pytest.mark.parametrize("name", sorted(
    n for n in EXPERIMENTS + list(FAMILY_EXPERIMENTS)
    if not n.startswith("cifar10") and n != "digits_latent_vp"))  # needs a trained VAE
def test_every_embedded_data_experiment_builds_its_family(name):
    """Building a family traces its networks at the data's shape and refuses a mismatch."""
    from training.families import get_family

    family = get_family(importlib.import_module(f"configs.{name}").get_config())
    assert family.config.model.family == (FAMILY_EXPERIMENTS.get(name) or "diffusion")
