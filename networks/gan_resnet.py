"""SNGAN's residual GAN pair (Miyato et al. 2018), NHWC; see :mod:`networks.gan`.

Constant width as in SNGAN's CIFAR models: G is ``k`` upsampling GBlocks, D is ``k + 1``
DBlocks (the first one "optimised") then ReLU, sum pooling and a projection head.
``remat='block'`` recomputes each block in the backward pass.
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
from networks.layers import Conv1x1, Conv3x3, GroupNorm, compute_dtype
from networks.resample import downsample_2d, upsample_2d
from networks.unet_blocks import REMAT

Array = jax.Array

# SNGAN initialises residual-branch convs with Xavier-uniform gain sqrt(2) (ReLU follows)
# and shortcuts with gain 1; layers.default_init(scale) is Xavier-uniform with gain^2 = scale.
RESIDUAL_INIT = 2.0


def _check_remat(remat: str) -> None:
    if remat not in REMAT:
        raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}")


class GBlock(nnx.Module):
    """GroupNorm-ReLU-up-conv-GroupNorm-ReLU-conv, plus a 1x1-conv upsampled shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, conv_impl: str, rngs: nnx.Rngs):
        self.norm0 = GroupNorm(in_ch)
        self.conv0 = Conv3x3(in_ch, out_ch, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
        self.norm1 = GroupNorm(out_ch)
        self.conv1 = Conv3x3(out_ch, out_ch, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
        self.skip = Conv1x1(in_ch, out_ch, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = self.conv0(upsample_2d(jax.nn.relu(self.norm0(x))))
        h = self.conv1(jax.nn.relu(self.norm1(h)))
        # Nearest upsampling commutes with a 1x1 conv: convolve at the lower resolution.
        return h + upsample_2d(self.skip(x))


class DBlock(nnx.Module):
    """ReLU-conv-ReLU-conv(-avgpool) plus a shortcut (1x1 conv when shape changes).

    ``optimised`` is SNGAN's first block: no pre-activation (its input is the image).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        downsample: bool,
        optimised: bool = False,
        spectral_norm: bool,
        conv_impl: str,
        rngs: nnx.Rngs,
    ):
        self.downsample = downsample
        self.optimised = optimised

        def conv(cin: int, cout: int) -> Any:
            layer = Conv3x3(cin, cout, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
            return _maybe_sn(layer, spectral_norm, rngs)

        self.conv0 = conv(in_ch, out_ch)
        self.conv1 = conv(out_ch, out_ch)
        self.skip = (
            _maybe_sn(Conv1x1(in_ch, out_ch, rngs=rngs), spectral_norm, rngs)
            if in_ch != out_ch or downsample
            else None
        )

    def __call__(self, x: Array, *, train: bool) -> Array:
        h = x if self.optimised else jax.nn.relu(x)
        h = _apply(self.conv1, jax.nn.relu(_apply(self.conv0, h, train)), train)
        # Average pooling commutes with a 1x1 conv, so SNGAN's two shortcut orders (pool
        # then conv in the optimised block, conv then pool elsewhere) are one: pool first.
        s = downsample_2d(x) if self.downsample else x
        if self.skip is not None:
            s = _apply(self.skip, s, train)
        return (downsample_2d(h) if self.downsample else h) + s


class ResNetGenerator(nnx.Module):
    """z -> dense 4x4 -> ``num_blocks`` upsampling GBlocks -> GroupNorm-ReLU-conv -> tanh."""

    def __init__(
        self,
        *,
        latent_dim: int,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_remat(remat)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.num_blocks = num_stages(image_size)
        self.input = LatentInput(latent_dim, nf, num_classes=num_classes, rngs=rngs)
        self.blocks = nnx.List(
            [GBlock(nf, nf, conv_impl=conv_impl, rngs=rngs) for _ in range(self.num_blocks)]
        )
        self.norm_out = GroupNorm(nf)
        self.conv_out = Conv3x3(nf, num_channels, impl=conv_impl, rngs=rngs)

    def __call__(
        self, z: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 images (B, H, W, C) in [-1, 1]; ``train`` changes nothing (no batch
        statistics)."""

        def run(block: GBlock, h: Array) -> Array:
            return block(h)

        if self.remat == "block":
            run = nnx.remat(run)
        h = self.input(z.astype(self.dtype), class_labels)
        for block in self.blocks:
            h = run(block, h)
        return jnp.tanh(self.conv_out(jax.nn.relu(self.norm_out(h))).astype(jnp.float32))


class ResNetDiscriminator(nnx.Module):
    """Optimised DBlock + downsampling DBlocks to 4x4, one more DBlock, ReLU, sum pool, head.

    ``num_blocks`` = k + 1 for ``image_size = 4 * 2**k`` (32x32: 4 blocks, as SNGAN's CIFAR D).
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_remat(remat)
        k = num_stages(image_size)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_blocks = k + 1
        opts = dict(spectral_norm=spectral_norm, conv_impl=conv_impl, rngs=rngs)
        blocks = [DBlock(num_channels, nf, downsample=True, optimised=True, **opts)]
        blocks += [DBlock(nf, nf, downsample=True, **opts) for _ in range(k - 1)]
        blocks.append(DBlock(nf, nf, downsample=False, **opts))
        self.blocks = nnx.List(blocks)
        self.head = ProjectionHead(
            nf, num_classes=num_classes, spectral_norm=spectral_norm, rngs=rngs
        )

    def __call__(
        self, x: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 logits (B,); ``train=True`` advances the spectral-norm power iterations."""
        _check_images(x, self.image_size, self.num_channels)
        _check_labels(self.head.num_classes, class_labels, x.shape[0])  # before any compute

        # `train` is closed over: a Python bool, not an argument for remat to trace.
        def run(block: DBlock, h: Array) -> Array:
            return block(h, train=train)

        if self.remat == "block":
            run = nnx.remat(run)
        h = x.astype(self.dtype)
        for block in self.blocks:
            h = run(block, h)
        # Sum pooling in float32: a sum of H*W bfloat16 terms would lose the small ones.
        phi = jnp.sum(jax.nn.relu(h).astype(jnp.float32), axis=(1, 2))
        return self.head(phi, class_labels, train=train)
