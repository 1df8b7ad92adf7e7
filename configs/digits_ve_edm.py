"""VE SDE on the embedded 8x8 digits with EDM's preconditioning and training objective
(Karras et al., 2022): configs/digits_ve.py's network, sigma range and data, the network
read as a denoiser D = c_skip x + c_out F(c_in x, c_noise) and trained at lognormal noise
levels with EDM's weighting. Sampled by EDM's Heun (17 steps + the final denoising step,
35 evaluations), where digits_ve's probability flow gives FD about 1.0 (docs/results.md,
"The VE probability-flow gap")."""

from configs.digits_ve import get_config as digits_ve_config


def get_config():
    config = digits_ve_config()
    config.model.preconditioning = "edm"
    config.training.objective = "edm"
    config.sampling.method = "edm_heun"
    config.sampling.steps = 17
    # The probability flow gains more from training than the SDE samplers do (EDM Heun
    # 0.317 after 3,000 steps, 0.160 after 5,500; Euler-Maruyama 0.193 and 0.127): 5,000
    # steps, so that it trains in under 10 minutes on 2 cores.
    config.training.n_iters = 5000
    return config
