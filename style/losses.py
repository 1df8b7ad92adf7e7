"""The losses of neural style transfer (Gatys, Ecker and Bethge, 2016), pure jnp, batched.

Features are NHWC activations of one layer. Each loss is relative to the energy of its
target (``mean(P**2)`` for content, ``mean(A**2)`` for a Gram matrix): feature scales
differ wildly between networks (torchvision's VGG sees normalised pixels, Keras' caffe
weights see 0-255 ones and give activations ~60x larger, a small CNN anything), and
relative losses let one set of weights (:class:`style.gatys.GatysOptions`) mean the same
thing for all of them. Relative to Gatys' sums this is a per-layer constant factor, so
the minimisers of each term are unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

Array = jax.Array

# Keeps a relative loss finite when its target is all zeros (a dead ReLU layer).
_EPS = 1e-12


def gram(features: Array) -> Array:
    """Gram matrices of (N, H, W, C) features: (N, C, C), ``F^T F / (C H W)``.

    Normalising by the layer's size makes a layer's Gram matrix independent of the image
    size, so the style targets of one image fit an output of another size.
    """
    if features.ndim != 4:
        raise ValueError(f"gram wants (N, H, W, C) features, got shape {features.shape}")
    n, h, w, c = features.shape
    flat = features.reshape(n, h * w, c).astype(jnp.float32)
    return jnp.einsum("npc,npd->ncd", flat, flat) / (c * h * w)


def content_loss(features: Array, target: Array) -> Array:
    """``mean((F - P)**2) / mean(P**2)``: zero at ``features == target``, one at zero
    features; the mean runs over the batch too (``target`` broadcasts)."""
    target = jnp.asarray(target, jnp.float32)
    error = jnp.mean(jnp.square(features.astype(jnp.float32) - target))
    return error / (jnp.mean(jnp.square(target)) + _EPS)


def style_loss(
    features: Mapping[str, Array],
    style_grams: Mapping[str, Array],
    layer_weights: Mapping[str, float],
) -> Array:
    """``sum_l w_l mean((G_l - A_l)**2) / mean(A_l**2)`` over the layers of
    ``layer_weights``: G_l is :func:`gram` of ``features[l]``, A_l the style's Gram
    matrix, (C, C) or (N, C, C)."""
    total = jnp.zeros((), jnp.float32)
    for name, weight in layer_weights.items():
        target = jnp.asarray(style_grams[name], jnp.float32)
        error = jnp.mean(jnp.square(gram(features[name]) - target))
        total = total + weight * error / (jnp.mean(jnp.square(target)) + _EPS)
    return total


def total_variation(images: Array) -> Array:
    """Mean squared difference between vertical and between horizontal neighbours of
    (N, H, W, C) images (the squared, smooth form: L-BFGS wants a differentiable
    objective); zero for a constant image."""
    x = images.astype(jnp.float32)
    dy = jnp.mean(jnp.square(x[:, 1:] - x[:, :-1])) if x.shape[1] > 1 else 0.0
    dx = jnp.mean(jnp.square(x[:, :, 1:] - x[:, :, :-1])) if x.shape[2] > 1 else 0.0
    return jnp.asarray(dy + dx, jnp.float32)
