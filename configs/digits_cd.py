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
    # A step costs about twice a digits_vp step (the teacher's Heun step, the target).
    config.training.n_iters = 2000
    return config
