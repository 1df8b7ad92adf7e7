"""Convolutional VAE on the embedded 8x8 digits: a 4x4x2 Gaussian latent, a discretised
logistic decoder for the 8-bit pixels; the VAE that digits_latent_vp.py builds on."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "vae"
    config.model.name = "conv_vae"
    config.model.nf = 32
    config.model.ch_mult = (1, 2)
    config.model.num_res_blocks = 1
    config.model.latent_channels = 2
    config.model.ema_rate = 0.999
    config.training.n_iters = 4000
    config.training.batch_size = 64
    config.vae.likelihood = "discretized_logistic"
    config.vae.kl_warmup_steps = 500
    config.optim.lr = 1e-3
    return config
