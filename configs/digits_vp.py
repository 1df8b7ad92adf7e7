"""VP SDE (continuous DDPM++) on the embedded 8x8 digits: the README's default run."""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.training.sde = "vpsde"
    config.sampling.method = "pc"
    config.sampling.predictor = "euler_maruyama"
    config.sampling.corrector = "none"
    return config
