"""Convolutional VAE on CIFAR-10: an 8x8x4 latent (a latent-diffusion autoencoder's shape)
and a discretised logistic decoder (needs the TFDS cifar10 prepared)."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "vae"
    config.model.name = "conv_vae"
    config.model.nf = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.model.latent_channels = 4
    data = config.data
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    training = config.training
    training.batch_size = 128
    training.n_iters = 200_000
    training.snapshot_freq = 10_000
    training.snapshot_freq_for_preemption = 2_000
    config.vae.kl_warmup_steps = 10_000
    config.vae.free_bits = 0.05
    config.optim.lr = 2e-4
    return config
