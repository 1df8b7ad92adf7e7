"""sub-VP SDE on the embedded 8x8 digits (same network and schedule as digits_vp)."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.training.sde = "subvpsde"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    return config
