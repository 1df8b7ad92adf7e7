"""SNGAN (Miyato et al., 2018) on CIFAR-10: ResNet generator and spectrally normalised
ResNet discriminator, hinge loss, Adam(0, 0.9) at 2e-4 (needs the TFDS cifar10 prepared)."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "gan"
    config.model.name = "resnet"
    config.model.nf = 256
    config.model.d_nf = 128
    config.model.latent_dim = 128
    config.model.spectral_norm = True
    data = config.data
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.random_flip = True
    training = config.training
    training.batch_size = 64
    training.n_iters = 100_000
    training.snapshot_freq = 10_000
    training.snapshot_freq_for_preemption = 2_000
    config.gan.loss = "hinge"
    config.gan.ema_halflife_images = 500_000
    config.gan.ema_rampup = 0.05
    optim = config.optim
    optim.lr = 2e-4
    optim.beta1 = 0.0
    optim.beta2 = 0.9
    optim.warmup = 0
    optim.schedule = "constant"
    optim.grad_clip = 0.0
    # A GAN has no likelihood: bits/dim is not among its metrics.
    config.eval.metrics = "fd,kid,pr,cs"
    return config
