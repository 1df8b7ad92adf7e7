"""Rectified flow (flow matching on the linear path x_t = (1 - t) x0 + t z) on the embedded
8x8 digits: configs/digits_vp.py's U-Net, data and schedule, with a velocity network
sampled by Heun steps on the velocity, uniform in t."""

from configs.digits_vp import get_config as digits_vp_config


def get_config():
    config = digits_vp_config()
    config.training.sde = "linear_path"  # 'cosine_path': x_t = cos(pi t/2) x0 + sin(pi t/2) z
    config.training.objective = "flow_matching"
    config.model.preconditioning = "velocity"  # the network predicts v = z - x0
    # 9 Heun steps + the final step to t = 0: 19 evaluations, FD 0.157 against 0.147 at
    # 1,000 (Euler); 19 Euler steps (20 evaluations) gave 0.205 (docs/results.md).
    config.sampling.method = "flow_heun"
    config.sampling.steps = 9
    config.training.n_iters = 3000  # as measured: 5 min 25 s alone on 2 cores
    return config
