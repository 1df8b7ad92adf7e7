"""The train state: one pytree of arrays, so a train step is a pure function of it."""

from typing import Any

import flax
import jax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator.

    `params` and `ema_params` are `nnx.State`s of the model's parameters; `aux` holds any
    other trainable-module pytrees a family needs (a GAN's discriminator, for one).
    `rng` is a raw uint32 key; each step folds the step number into it, so randomness
    depends only on (seed, step), not on how the run was interrupted.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    aux: Any = None


def ema_update(ema: Any, params: Any, rate: float | jax.Array) -> Any:
    """ema <- rate * ema + (1 - rate) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)
