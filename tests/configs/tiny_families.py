"""Seconds-fast GAN, VAE and latent-diffusion configs on the digits for tests:
`tiny_families.py:gan`, `:gan_cond`, `:gan_sn` (ResNet pair, spectral norm, hinge, R1, R2,
DiffAugment), `:vae`, `:latent` (set `latent.vae_workdir` to a trained tiny VAE) and `:text`
(text_diffusion on captioned digits)."""

from configs.default import get_default_config
from tests.configs import tiny


def _common(config):
    training = config.training
    training.batch_size = 16
    training.n_iters = 2
    training.log_freq = 1
    training.eval_freq = 1
    training.snapshot_freq = 2
    training.snapshot_freq_for_preemption = 1000
    training.num_snapshot_samples = 4
    config.optim.warmup = 0
    config.optim.lr = 1e-3
    config.optim.schedule = "constant"
    config.eval.num_samples = 80
    config.eval.batch_size = 40
    return config


def get_config(kind: str = "gan"):
    if kind == "text":  # the text-to-image family on captioned digits
        config = tiny.get_config()
        config.model.family = "text_diffusion"
        config.data.captions = True
        config.model.attn_resolutions = ()
        config.model.text_attn_resolutions = (8,)
        config.sampling.guidance_scale = 2.0
        return config
    if kind == "latent":
        config = tiny.get_config()
        config.model.family = "latent_diffusion"
        config.model.attn_resolutions = ()
        config.model.ch_mult = (1,)
        config.latent.vae_config = "tests/configs/tiny_families.py:vae"
        return config
    config = _common(get_default_config())
    model = config.model
    if kind.startswith("gan"):
        model.family = "gan"
        model.name = "dcgan"
        model.nf = 8
        model.d_nf = 8
        model.latent_dim = 8
        config.gan.r1_gamma = 0.1
        config.gan.reg_interval = 2
        config.gan.ema_halflife_images = 64
        if kind == "gan_cond":
            model.num_classes = 10
        if kind == "gan_sn":
            model.name = "resnet"
            model.spectral_norm = True
            model.num_classes = 10
            config.gan.loss = "hinge"
            config.gan.r2_gamma = 0.1
            config.gan.augment = "color,translation,cutout"
        return config
    if kind == "vae":
        model.family = "vae"
        model.name = "conv_vae"
        model.nf = 8
        model.ch_mult = (1, 2)
        model.num_res_blocks = 1
        model.latent_channels = 2
        config.vae.kl_warmup_steps = 2
        config.vae.free_bits = 0.01
        config.vae.iwae_samples = 4
        return config
    raise ValueError(f"unknown tiny family config {kind!r}")
