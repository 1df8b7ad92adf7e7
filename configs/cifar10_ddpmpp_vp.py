"""DDPM++ (continuous VP SDE) on CIFAR-10, score_sde's published hyperparameters."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    training = config.training
    training.batch_size = 128
    training.n_iters = 1_300_001
    training.snapshot_freq = 50_000
    training.snapshot_freq_for_preemption = 10_000
    training.eval_freq = 100
    training.log_freq = 50
    training.sde = "vpsde"
    training.continuous = True
    training.reduce_mean = True

    sampling = config.sampling
    sampling.method = "pc"
    sampling.predictor = "euler_maruyama"
    sampling.corrector = "none"
    sampling.steps = 1000

    data = config.data
    data.dataset = "cifar10"
    data.image_size = 32
    data.num_channels = 3
    data.centered = True
    data.random_flip = True

    model = config.model
    model.name = "ddpmpp"
    model.nf = 128
    model.ch_mult = (1, 2, 2, 2)
    model.num_res_blocks = 4
    model.attn_resolutions = (16,)
    model.dropout = 0.1
    model.resblock_type = "biggan"
    model.embedding_type = "positional"
    model.ema_rate = 0.9999
    model.beta_min = 0.1
    model.beta_max = 20.0
    model.num_scales = 1000

    optim = config.optim
    optim.lr = 2e-4
    optim.beta1 = 0.9
    optim.eps = 1e-8
    optim.warmup = 5000
    optim.schedule = "constant"
    optim.grad_clip = 1.0
    return config
