"""Consistency distillation (Song et al., 2023) of a trained digits_vp run on the embedded
8x8 digits: configs/digits_vp.py's U-Net and data, a student f(x, sigma) taught by one
Heun step of the teacher's probability-flow ODE between adjacent levels of an 18-level
grid, drawn in 1 to 17 network calls (sample.py --steps). Train the teacher first:
`python train.py --config configs/digits_vp.py --workdir runs/digits_vp`; another teacher
is `--config.distill.teacher_workdir=...`."""

from configs.digits_vp import get_config as digits_vp_config


def get_config():
    config = digits_vp_config()
    config.model.family = "consistency"
    config.training.objective = "consistency_distillation"
    config.distill.teacher_workdir = "runs/digits_vp"
    config.consistency.intervals = 17  # N = 18 levels, the paper's CIFAR-10 setting
    config.consistency.initial_intervals = 17
    config.consistency.target_ema = 0.95
    config.consistency.solver = "heun"
    config.consistency.loss = "l2"
    config.sampling.method = "consistency"
    config.sampling.steps = 1
    config.eval.metrics = "fd,kid,pr,cs"  # no likelihood
    # digits_vp's EMA (0.999) still weighs the first thousand steps at 2,000: sampled from
    # it, a 2,000-step digits_cd run gave FD 1.03 at 1 step against 0.31 from its raw
    # weights. A 100-step time constant.
    config.model.ema_rate = 0.99
    # A step costs about twice a digits_vp step (the teacher's Heun step, the target).
    config.training.n_iters = 2000
    return config
