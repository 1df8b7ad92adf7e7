"""The network zoo: a registry from ``config.model.name`` to a builder.

Every score network is called as
``model(x, c_noise, *, train=False, key=None, class_labels=None) -> array of x's shape``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from networks import mlp, unet

Builder = Callable[[Any, nnx.Rngs], nnx.Module]

# DDPM++ and NCSN++ are one class; their configs differ (FIR, progressive paths, embedding).
MODELS: dict[str, Builder] = {
    "ddpmpp": unet.from_config,
    "ncsnpp": unet.from_config,
    "mlp": mlp.from_config,
}


def get_model(config: Any, rngs: nnx.Rngs) -> nnx.Module:
    """Build the network named by ``config.model.name``, reading ``config.model``/``.data``."""
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](config, rngs)


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) in ``model``."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["MODELS", "get_model", "param_count"]
