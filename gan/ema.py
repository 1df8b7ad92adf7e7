"""Exponential moving average of generator weights with a half-life in images.

Following StyleGAN and EDM, the averaging horizon is stated in training images rather
than steps: after ``half_life_images`` images the old weights' share has halved, whatever
the batch size. An optional ramp-up shortens the half-life early in training, while the
weights move fast, so the average does not lag behind a poor initialisation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = jax.Array

__all__ = ["ema_beta", "ema_update"]


def ema_beta(
    batch_size: int,
    half_life_images: float,
    step: Array | int | None = None,
    rampup: float | None = None,
) -> Array:
    """Decay per step, ``0.5 ** (batch_size / half_life)``, as a float32 scalar.

    With ``rampup`` (EDM uses 0.05) the half-life is ``min(half_life_images, step *
    batch_size * rampup)``: at most ``rampup`` times the images seen so far. ``step`` (the
    number of steps already taken) may be traced. A half-life of 0 gives ``beta = 0``:
    the average is the current weights.
    """
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if half_life_images < 0:
        raise ValueError(f"half_life_images must be non-negative, got {half_life_images}")
    half_life = jnp.asarray(half_life_images, jnp.float32)
    if rampup is not None:
        if rampup < 0:
            raise ValueError(f"rampup must be non-negative, got {rampup}")
        if step is None:
            raise ValueError("an EMA ramp-up needs the current step")
        images_seen = jnp.asarray(step, jnp.float32) * batch_size
        half_life = jnp.minimum(half_life, images_seen * rampup)
    safe = jnp.where(half_life > 0, half_life, 1.0)
    return jnp.where(half_life > 0, 0.5 ** (batch_size / safe), 0.0)


def ema_update(ema: Any, params: Any, beta: Array | float) -> Any:
    """Leafwise ``ema * beta + params * (1 - beta)`` over matching pytrees.

    Leaves keep the EMA's dtype; non-float leaves (counters, indices) are copied from
    ``params``, since averaging them means nothing.
    """

    def update(e: Array, p: Array) -> Array:
        if not jnp.issubdtype(jnp.result_type(e), jnp.inexact):
            return p
        return (e * beta + p * (1.0 - beta)).astype(jnp.result_type(e))

    return jax.tree.map(update, ema, params)
