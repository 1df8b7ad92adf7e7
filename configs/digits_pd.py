"""Progressive distillation (Salimans & Ho, 2022) on the embedded 8x8 digits: one run
halves DDIM's steps from 64 to 4 in four equal rounds (32, 16, 8, 4) on DDIM's quadratic
time grid, the student starting as its teacher, a v-prediction digits_vp run (PD needs v
or x prediction: noise prediction at 4 steps reads x0 off a 1/alpha(1) = 150-fold
amplified error). Train the teacher first:

  python train.py --config configs/digits_v.py --workdir runs/digits_v
"""

from configs.digits_vp import get_config as digits_vp_config


def get_config():
    config = digits_vp_config()
    config.model.family = "progressive_distillation"
    config.training.objective = "progressive_distillation"
    config.model.preconditioning = "v"
    config.distill.teacher_workdir = "runs/digits_v"
    config.progressive.teacher_steps = 64
    config.progressive.student_steps = 4
    config.sampling.method = "ddim"
    config.sampling.steps = 4
    config.eval.metrics = "fd,kid,pr,cs"  # no likelihood
    # DDIM's quadratic grid: at 4 steps the uniform one leaves t = 0.25 (SNR about 1) to
    # t = 0 to a single step, where a VP model forms the digit's detail.
    config.progressive.time_spacing = "quadratic"
    config.progressive.round_steps = 400
    config.training.n_iters = 1600  # 4 rounds, within 10 minutes on 2 cores
    # It starts from a trained network: no warm-up, a constant rate for every round, and an
    # EMA short against a 400-step round (0.999 would mix in the previous rounds).
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    config.optim.lr = 5e-4
    config.model.ema_rate = 0.99
    return config
