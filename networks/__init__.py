"""The network zoo: a registry from ``config.model.name`` to a builder.

Every score network is called as
``model(x, c_noise, *, train=False, key=None, class_labels=None) -> array of x's shape``.

Precision and memory, for every network in the zoo (score networks, GANs, the VAE, the
noise classifier): ``model.dtype`` (:data:`DTYPES`) is the compute dtype of the feature
maps (parameters stay float32, outputs leave as float32); ``model.remat``
(:data:`REMAT_MODES`) 'block' recomputes each residual/attention block in the backward
pass, which only the networks in :data:`REMAT_NETWORKS` have.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
from flax import nnx

from networks import mlp, unet, unet_blocks
from networks.layers import DTYPES

Builder = Callable[[Any, nnx.Rngs], nnx.Module]

# DDPM++ and NCSN++ are one class; their configs differ (FIR, progressive paths, embedding).
MODELS: dict[str, Builder] = {
    "ddpmpp": unet.from_config,
    "ncsnpp": unet.from_config,
    "mlp": mlp.from_config,
}

# The values of model.remat; 'block' wraps each residual/attention block in nnx.remat.
REMAT_MODES: tuple[str, ...] = unet_blocks.REMAT
# The networks (model.name, every family) built of residual blocks that model.remat='block'
# rematerialises. The others (DCGAN's plain conv stacks, the toy MLP) have no block to
# wrap, so the setting is refused for them rather than silently ignored.
REMAT_NETWORKS: frozenset[str] = frozenset(
    {"ddpmpp", "ncsnpp", "resnet", "conv_vae", "noise_cnn"}
)


def get_model(config: Any, rngs: nnx.Rngs) -> nnx.Module:
    """Build the network named by ``config.model.name``, reading ``config.model``/``.data``."""
    name = config.model.name
    if name not in MODELS:
        raise ValueError(f"unknown model.name {name!r}; known: {sorted(MODELS)}")
    return MODELS[name](config, rngs)


def param_count(model: nnx.Module) -> int:
    """Number of scalar parameters (``nnx.Param`` leaves) in ``model``."""
    return sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ["DTYPES", "MODELS", "REMAT_MODES", "REMAT_NETWORKS", "get_model", "param_count"]
