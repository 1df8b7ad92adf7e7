"""DiffAugment (Zhao et al. 2020): differentiable augmentations for data-efficient GANs.

The caller applies the same policy to real and generated images, in both the
discriminator's and the generator's step, so D never sees an un-augmented distribution
and the generator's gradients pass through the augmentation. Every operation draws its
parameters per example, is differentiable with respect to the images and compiles under
``jax.jit`` (shapes depend only on the input's shape).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
AugmentFn = Callable[[Array, Array], Array]

__all__ = ["AUGMENTATIONS", "diff_augment", "parse_policy"]


def _per_example(key: Array, x: Array, low: float, high: float) -> Array:
    """Uniform draws on [low, high), shaped (B, 1, 1, 1) to broadcast over an image."""
    return jax.random.uniform(key, (x.shape[0], 1, 1, 1), x.dtype, low, high)


def _color(key: Array, x: Array) -> Array:
    """Brightness +-0.5, then saturation x[0, 2], then contrast x[0.5, 1.5], per example."""
    k_bright, k_sat, k_con = jax.random.split(key, 3)
    x = x + _per_example(k_bright, x, -0.5, 0.5)
    gray = jnp.mean(x, axis=3, keepdims=True)
    x = (x - gray) * _per_example(k_sat, x, 0.0, 2.0) + gray
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x - mean) * _per_example(k_con, x, 0.5, 1.5) + mean


def _shift_axis(x: Array, shift: Array, axis: int) -> Array:
    """Shift each example by ``shift[b]`` along ``axis`` with zero fill.

    A gather with per-example indices: out[i] = x[i - shift], zeroed where i - shift is
    off the image. Its gradient is a scatter-add, so it stays differentiable in x.
    """
    size = x.shape[axis]
    shape = [1, 1, 1, 1]
    shape[0], shape[axis] = x.shape[0], size
    source = (jnp.arange(size)[None, :] - shift[:, None]).reshape(shape)
    inside = (source >= 0) & (source < size)
    gathered = jnp.take_along_axis(x, jnp.clip(source, 0, size - 1), axis=axis)
    return jnp.where(inside, gathered, jnp.zeros((), x.dtype))


def _translation(key: Array, x: Array) -> Array:
    """Integer shift of at most 1/8 of the height (width) per example, zero padded."""
    k_h, k_w = jax.random.split(key)
    batch, height, width = x.shape[:3]
    max_h, max_w = height // 8, width // 8
    shift_h = jax.random.randint(k_h, (batch,), -max_h, max_h + 1)
    shift_w = jax.random.randint(k_w, (batch,), -max_w, max_w + 1)
    return _shift_axis(_shift_axis(x, shift_h, 1), shift_w, 2)


def _cutout(key: Array, x: Array) -> Array:
    """Zero a (H/2) x (W/2) rectangle (rounded) at a random position inside each image.

    Unlike the reference implementation, whose square may hang over the border, the
    rectangle always lies wholly inside, so every image loses exactly the same area.
    """
    k_h, k_w = jax.random.split(key)
    batch, height, width = x.shape[:3]
    cut_h, cut_w = (height + 1) // 2, (width + 1) // 2
    top = jax.random.randint(k_h, (batch, 1, 1, 1), 0, height - cut_h + 1)
    left = jax.random.randint(k_w, (batch, 1, 1, 1), 0, width - cut_w + 1)
    rows = jnp.arange(height).reshape(1, height, 1, 1)
    cols = jnp.arange(width).reshape(1, 1, width, 1)
    hole = (rows >= top) & (rows < top + cut_h) & (cols >= left) & (cols < left + cut_w)
    return jnp.where(hole, jnp.zeros((), x.dtype), x)


# Policy item -> augment(key, x (B, H, W, C)) -> x, applied in the policy's order.
AUGMENTATIONS: dict[str, AugmentFn] = {
    "color": _color,
    "translation": _translation,
    "cutout": _cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """The items of a comma-separated DiffAugment policy, checked against
    :data:`AUGMENTATIONS`; ``''`` gives ``()``. Call it when reading a config to fail
    early."""
    items = tuple(item.strip() for item in policy.split(",") if item.strip())
    for item in items:
        if item not in AUGMENTATIONS:
            raise ValueError(
                f"unknown DiffAugment policy item {item!r}; known: {sorted(AUGMENTATIONS)}"
            )
    return items


def diff_augment(key: Array, x: Array, policy: str) -> Array:
    """Augment images ``x (B, H, W, C)`` in [-1, 1] by ``policy``, e.g.
    ``'color,translation,cutout'``; ``''`` returns ``x`` unchanged.

    * ``color``: per example, brightness + U[-0.5, 0.5], saturation x U[0, 2], contrast
      x U[0.5, 1.5] (the result may leave [-1, 1], as in the reference).
    * ``translation``: integer shift of up to floor(H/8) rows and floor(W/8) columns per
      example, zero padded.
    * ``cutout``: zero a rectangle of half the height and width (rounded up) at a random
      position inside each image.

    Each item uses its own subkey of ``key``. Apply the same policy (with independent
    keys) to real and generated batches.
    """
    items = parse_policy(policy)
    if not items:
        return x
    if x.ndim != 4:
        raise ValueError(f"diff_augment expects images (B, H, W, C), got shape {x.shape}")
    for item, item_key in zip(items, jax.random.split(key, len(items)), strict=True):
        x = AUGMENTATIONS[item](item_key, x)
    return x
