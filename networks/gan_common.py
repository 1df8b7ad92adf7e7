"""Pieces both GAN pairs (:mod:`networks.gan_dcgan`, :mod:`networks.gan_resnet`) share.

G's :class:`LatentInput` (z and an optional label embedding to a 4x4 map), D's
:class:`ProjectionHead` (projection-discriminator logits), the image-size rule
:func:`num_stages`, input checks, and the helpers that make spectral normalisation
optional. The registry and ``from_config`` are in :mod:`networks.gan`.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Dense, Embed
from networks.spectral_norm import SpectralNorm

Array = jax.Array


def num_stages(image_size: int) -> int:
    """k such that ``image_size == 4 * 2**k``; ValueError unless k >= 1."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(
            f"GAN networks need image_size = 4 * 2**k with k >= 1 (8, 16, 32, 64, ...), "
            f"got {image_size}"
        )
    return image_size.bit_length() - 3


def _check_labels(num_classes: int, class_labels: Array | None, batch: int) -> None:
    if num_classes == 0 and class_labels is not None:
        raise ValueError("class_labels given to an unconditional network (num_classes=0)")
    if num_classes > 0 and class_labels is None:
        raise ValueError(
            f"this network is class-conditional (num_classes={num_classes}): pass class_labels"
        )
    if class_labels is not None and jnp.shape(class_labels) != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {jnp.shape(class_labels)}")


def _maybe_sn(layer: Any, enabled: bool, rngs: nnx.Rngs) -> Any:
    return SpectralNorm(layer, rngs=rngs) if enabled else layer


def _apply(layer: Any, x: Array, train: bool) -> Array:
    """Plain layers ignore ``train``; spectrally normalised ones update ``u`` when set."""
    return layer(x, train=train) if isinstance(layer, SpectralNorm) else layer(x)


class LatentInput(nnx.Module):
    """G's input: [z, embed(label)] -> dense -> (B, 4, 4, channels)."""

    def __init__(self, latent_dim: int, channels: int, *, num_classes: int, rngs: nnx.Rngs):
        self.latent_dim = latent_dim
        self.channels = channels
        self.num_classes = num_classes
        # The embedding gets z's width, so the label weighs as much as the noise at first.
        self.label_embed = Embed(num_classes, latent_dim, rngs=rngs) if num_classes else None
        in_dim = 2 * latent_dim if num_classes else latent_dim
        self.dense = Dense(in_dim, 16 * channels, rngs=rngs)

    def __call__(self, z: Array, class_labels: Array | None) -> Array:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected z of shape (B, {self.latent_dim}), got {z.shape}")
        _check_labels(self.num_classes, class_labels, z.shape[0])
        if self.label_embed is not None:
            # The table is float32; it meets z in z's (compute) dtype.
            z = jnp.concatenate([z, self.label_embed(class_labels).astype(z.dtype)], axis=-1)
        return self.dense(z).reshape(z.shape[0], 4, 4, self.channels)


class ProjectionHead(nnx.Module):
    """D's output: dense(phi) (+ <embed(y), phi> when conditional), phi (B, dim) -> (B,)."""

    def __init__(self, dim: int, *, num_classes: int, spectral_norm: bool, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.dense = _maybe_sn(Dense(dim, 1, rngs=rngs), spectral_norm, rngs)
        self.label_embed = (
            _maybe_sn(Embed(num_classes, dim, rngs=rngs), spectral_norm, rngs)
            if num_classes
            else None
        )

    def __call__(self, phi: Array, class_labels: Array | None, *, train: bool) -> Array:
        """Float32 logits: phi is cast up, so the head is a float32 dot product."""
        _check_labels(self.num_classes, class_labels, phi.shape[0])
        phi = phi.astype(jnp.float32)
        logits = _apply(self.dense, phi, train)[:, 0]
        if self.label_embed is not None:
            logits = logits + jnp.sum(_apply(self.label_embed, class_labels, train) * phi, -1)
        return logits


def _check_images(x: Array, image_size: int, num_channels: int) -> None:
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, num_channels):
        raise ValueError(
            f"expected x of shape (B, {image_size}, {image_size}, {num_channels}), got {x.shape}"
        )
