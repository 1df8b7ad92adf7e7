"""Consistency training from scratch (Song & Dhariwal, 2024's improved recipe) on the
embedded 8x8 digits: configs/digits_vp.py's U-Net and data, no teacher; the pseudo-Huber
distance, lognormal noise levels (ln sigma ~ N(-1.1, 2^2)), weights 1/(s_{n+1} - s_n), the
student as its own target, and a grid doubling from 10 to 1280 intervals over training."""

from configs.digits_vp import get_config as digits_vp_config


def get_config():
    config = digits_vp_config()
    config.model.family = "consistency"
    config.training.objective = "consistency_training"
    config.consistency.initial_intervals = 10
    config.consistency.intervals = 1280
    config.consistency.loss = "pseudo_huber"
    config.consistency.weighting = "inverse_gap"
    config.consistency.noise_levels = "lognormal"
    config.training.P_mean = -1.1
    config.training.P_std = 2.0
    config.consistency.target_ema = 0.0
    config.sampling.method = "consistency"
    config.sampling.steps = 1
    config.eval.metrics = "fd,kid,pr,cs"  # no likelihood
    config.model.ema_rate = 0.99  # digits_cd's: 0.999 is too slow for a few thousand steps
    config.training.n_iters = 2000  # within 10 minutes on 2 cores
    return config
