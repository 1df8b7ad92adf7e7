"""VE SDE on the embedded 8x8 digits with EDM's preconditioning and training objective
(Karras et al., 2022): configs/digits_ve.py's NCSN++ network and sigma range, the network
read as a denoiser D = c_skip x + c_out F(c_in x, c_noise) and trained at lognormal noise
levels with EDM's weighting. Sampled by EDM's Heun (18 steps, 35 evaluations)."""

from configs.digits_ve import get_config as digits_ve_config


def get_config():
    config = digits_ve_config()
    config.model.preconditioning = "edm"
    config.training.objective = "edm"
    config.sampling.method = "edm_heun"
    config.sampling.steps = 18
    return config
