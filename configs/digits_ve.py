"""VE SDE (NCSN++-style) on the embedded 8x8 digits.

Data in [0, 1]; sigma_max follows Song & Ermon (2020): about the largest distance
between two training images (8x8 pixels in [0, 1] are at most 8 apart).
"""

from configs.default import get_default_config


def get_config():
    config = get_default_config()
    config.training.sde = "vesde"
    config.data.centered = False
    config.model.name = "ncsnpp"
    config.model.embedding_type = "fourier"
    config.model.sigma_min = 0.01
    config.model.sigma_max = 10.0
    config.sampling.predictor = "reverse_diffusion"
    config.sampling.corrector = "langevin"
    config.sampling.snr = 0.16
    return config
