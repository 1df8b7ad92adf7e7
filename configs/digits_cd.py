"""Consistency distillation (Song et al., 2023) of a trained v-prediction digits_vp run (the
teacher digits_pd distils too) on the embedded 8x8 digits: the teacher's own network, read
as a denoiser, starts as the teacher's weights (consistency.parametrization='denoiser': one
Euler step to sigma_min along that denoiser, the teacher's one-step DDIM) and learns from
one Heun step of the teacher's probability-flow ODE between adjacent levels of an 18-level
grid; drawn in 1 to 17 network calls (sample.py --steps). Train the teacher first:

  python train.py --config configs/digits_v.py --workdir runs/digits_v

Another teacher is `--config.distill.teacher_workdir=...` (its network and preconditioning
must be this config's: the student starts as it)."""

from configs.digits_vp import get_config as digits_vp_config


def get_config():
    config = digits_vp_config()
    config.model.family = "consistency"
    config.training.objective = "consistency_distillation"
    config.distill.teacher_workdir = "runs/digits_v"
    config.model.preconditioning = "v"  # the teacher's
    config.consistency.parametrization = "denoiser"
    config.consistency.intervals = 17  # N = 18 levels, the paper's CIFAR-10 setting
    config.consistency.initial_intervals = 17
    config.consistency.target_ema = 0.95
    config.consistency.solver = "heun"
    config.consistency.loss = "l2"
    config.sampling.method = "consistency"
    config.sampling.steps = 1
    config.eval.metrics = "fd,kid,pr,cs"  # no likelihood
    # A fine-tuning of the teacher: no warm-up, the paper's constant rate, and an EMA with a
    # 100-step time constant (0.999 would still carry the teacher's one-step DDIM).
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    config.optim.lr = 4e-4
    config.model.ema_rate = 0.99
    # A step costs about two digits_vp steps (the teacher's Heun step, the target network).
    config.training.n_iters = 1500
    return config
