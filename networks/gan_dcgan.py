"""The DCGAN pair (Radford et al. 2016), NHWC; see :mod:`networks.gan` for the contract.

G projects z to 4x4, then k stages of nearest upsampling + 3x3 conv halving the channels
(plus ``convs_per_stage - 1`` same-size convs each), GroupNorm and ReLU; D is k stride-2
3x3 convs doubling them (both capped at 8x the base width), LeakyReLU(0.2), no
normalisation, and a projection head. No residual blocks, so no ``remat``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.gan_common import (
    LatentInput,
    ProjectionHead,
    _apply,
    _check_images,
    _check_labels,
    _maybe_sn,
    num_stages,
)
from networks.layers import Conv3x3, GroupNorm, compute_dtype
from networks.resample import Upsample

Array = jax.Array


class _ConvNormReLU(nnx.Module):
    """3x3 conv (same channels), GroupNorm, ReLU: DCGAN G's extra convs of a stage."""

    def __init__(self, channels: int, conv_impl: str, rngs: nnx.Rngs):
        self.conv = Conv3x3(channels, channels, impl=conv_impl, rngs=rngs)
        self.norm = GroupNorm(channels)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class DCGANGenerator(nnx.Module):
    """z -> dense 4x4 -> k x [upsample, conv, GroupNorm, ReLU, (conv, GroupNorm, ReLU) x
    (convs_per_stage - 1)] -> conv -> tanh."""

    def __init__(
        self,
        *,
        latent_dim: int,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        convs_per_stage: int = 1,
        conv_impl: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        k = num_stages(image_size)
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage}")
        self.dtype = compute_dtype(dtype)
        chs = [nf * min(2 ** (k - i), 8) for i in range(k + 1)]  # 4x4, 8x8, ..., full size
        self.input = LatentInput(latent_dim, chs[0], num_classes=num_classes, rngs=rngs)
        self.norm_in = GroupNorm(chs[0])
        self.ups = nnx.List(
            [Upsample(chs[i], chs[i + 1], with_conv=True, impl=conv_impl, rngs=rngs)
             for i in range(k)]
        )  # fmt: skip
        self.norms = nnx.List([GroupNorm(c) for c in chs[1:]])
        self.extras = nnx.List(  # per stage, the convs after its upsampling one
            [nnx.List([_ConvNormReLU(c, conv_impl, rngs) for _ in range(convs_per_stage - 1)])
             for c in chs[1:]]
        )  # fmt: skip
        self.conv_out = Conv3x3(nf, num_channels, impl=conv_impl, rngs=rngs)

    def __call__(
        self, z: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 images (B, H, W, C) in [-1, 1]; ``train`` changes nothing (no batch
        statistics)."""
        h = jax.nn.relu(self.norm_in(self.input(z.astype(self.dtype), class_labels)))
        for up, norm, extras in zip(self.ups, self.norms, self.extras, strict=True):
            h = jax.nn.relu(norm(up(h)))
            for layer in extras:
                h = layer(h)
        return jnp.tanh(self.conv_out(h).astype(jnp.float32))


class DCGANDiscriminator(nnx.Module):
    """conv -> k x [stride-2 conv, (conv) x (convs_per_stage - 1)], LeakyReLU(0.2) after
    each, flatten -> projection head."""

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        convs_per_stage: int = 1,
        conv_impl: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        k = num_stages(image_size)
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage}")
        self.dtype = compute_dtype(dtype)
        self.image_size = image_size
        self.num_channels = num_channels
        chs = [nf * min(2**i, 8) for i in range(k + 1)]  # full size, ..., 4x4

        def conv(cin: int, cout: int, stride: int) -> Any:
            layer = Conv3x3(cin, cout, stride=stride, impl=conv_impl, rngs=rngs)
            return _maybe_sn(layer, spectral_norm, rngs)

        self.conv_in = conv(num_channels, chs[0], 1)
        self.convs = nnx.List()
        for i in range(k):  # the stride-2 conv, then convs_per_stage - 1 at the new size
            self.convs.append(conv(chs[i], chs[i + 1], 2))
            for _ in range(convs_per_stage - 1):
                self.convs.append(conv(chs[i + 1], chs[i + 1], 1))
        self.head = ProjectionHead(
            16 * chs[-1], num_classes=num_classes, spectral_norm=spectral_norm, rngs=rngs
        )

    def __call__(
        self, x: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 logits (B,); ``train=True`` advances the spectral-norm power iterations."""
        _check_images(x, self.image_size, self.num_channels)
        _check_labels(self.head.num_classes, class_labels, x.shape[0])  # before any compute
        h = jax.nn.leaky_relu(_apply(self.conv_in, x.astype(self.dtype), train), 0.2)
        for conv in self.convs:
            h = jax.nn.leaky_relu(_apply(conv, h, train), 0.2)
        return self.head(h.reshape(h.shape[0], -1), class_labels, train=train)
