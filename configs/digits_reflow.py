"""Reflow (Liu et al., 2023) of a trained digits_rf run on the embedded 8x8 digits: the
same velocity U-Net, started as the digits_rf weights and trained on the (noise, image)
pairs its ODE couples, so that one or two Euler steps draw a digit. Two commands:

  python reflow.py --workdir runs/digits_rf --num_pairs 10000 --sampler flow_heun \
    --steps 9 --out runs/digits_rf/reflow_pairs.npz
  python train.py --config configs/digits_reflow.py --workdir runs/digits_reflow
"""

from configs.digits_rf import get_config as digits_rf_config


def get_config():
    config = digits_rf_config()
    config.model.family = "reflow"
    config.training.objective = "reflow"
    config.reflow.pairs = "runs/digits_rf/reflow_pairs.npz"
    config.distill.teacher_workdir = "runs/digits_rf"
    # It starts from a trained network: no warm-up, a constant rate, a short EMA.
    config.optim.warmup = 0
    config.optim.schedule = "constant"
    config.optim.lr = 5e-4
    config.model.ema_rate = 0.99
    config.training.n_iters = 1500
    config.sampling.method = "flow_euler"
    config.sampling.steps = 1  # one Euler step, then the step to t = 0: 2 evaluations
    config.eval.metrics = "fd,kid,pr,cs"
    return config
