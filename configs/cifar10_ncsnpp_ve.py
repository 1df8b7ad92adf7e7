"""NCSN++ (continuous VE SDE) on CIFAR-10, score_sde's published hyperparameters."""

from configs import cifar10_ddpmpp_vp


def get_config():
    config = cifar10_ddpmpp_vp.get_config()
    config.training.sde = "vesde"
    config.training.reduce_mean = False

    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.16

    config.data.centered = False

    model = config.model
    model.name = "ncsnpp"
    model.embedding_type = "fourier"
    model.fourier_scale = 16.0
    model.fir = True
    model.fir_kernel = (1, 3, 3, 1)
    model.progressive = "output_skip"
    model.progressive_input = "input_skip"
    model.ema_rate = 0.999
    model.sigma_min = 0.01
    model.sigma_max = 50.0
    model.num_scales = 1000
    return config
