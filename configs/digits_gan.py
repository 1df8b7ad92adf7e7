"""DCGAN on the embedded 8x8 digits: non-saturating loss with lazy R1, generator EMA,
self-conditioned on 20 k-means clusters of the training pixels (no labels: the model is
unconditional; sampling draws the clusters i.i.d. by their frequencies, or stratified with
--config.model.cluster_draws=stratified).

Sized to train in under 10 minutes on 2 CPU cores (README, GANs and VAEs)."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.model.family = "gan"
    config.model.name = "dcgan"
    config.model.nf = 64
    config.model.d_nf = 64
    config.model.latent_dim = 32
    config.model.self_condition_clusters = 20
    training = config.training
    training.batch_size = 64
    training.n_iters = 5000
    training.snapshot_freq = 2000
    training.snapshot_freq_for_preemption = 500
    gan = config.gan
    gan.loss = "ns"
    gan.r1_gamma = 0.1
    gan.reg_interval = 4
    gan.ema_halflife_images = 10_000
    optim = config.optim
    optim.lr = 2e-4
    optim.beta1 = 0.5
    optim.beta2 = 0.99
    optim.warmup = 0
    optim.schedule = "constant"
    optim.grad_clip = 0.0
    # A GAN has no likelihood: bits/dim is not among its metrics.
    config.eval.metrics = "fd,kid,pr,cs"
    return config
