"""Model families: what the training loop knows of diffusion, GANs and VAEs.

A family is built from the config and exposes `init_state(key) -> TrainState`,
`train_step(state, batch) -> (state, metrics)`, `eval_step(state, batch, key) -> metrics`,
`make_sampler(num, ...) -> sample(params, key) -> (images in [0, 1], nfe)` and
`sample_params(state)`. The loop jits the steps; the family keeps them pure.
`noise_classifier` trains a classifier p(y | x_t, t) for classifier guidance: its
`make_sampler` refuses, and it exposes `log_prob_fn(params) -> log_prob(x, t, labels)`.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

from training.errors import UserError
from training.families.diffusion import DiffusionFamily
from training.families.noise_classifier import NoiseClassifierFamily

FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {
    "diffusion": DiffusionFamily,
    "noise_classifier": NoiseClassifierFamily,
}


def get_family(config: ml_collections.ConfigDict):
    """Builds the family named by `config.model.family`."""
    name = config.model.family
    if name not in FAMILIES:
        raise UserError(f"config.model.family={name!r} is not one of {sorted(FAMILIES)}")
    return FAMILIES[name](config)
