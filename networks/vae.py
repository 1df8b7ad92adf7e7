"""Convolutional VAE encoder and decoder (NHWC) with a spatial latent, as in latent diffusion.

Both are built from the U-Net's BigGAN-style :class:`networks.unet_blocks.ResBlock` (pre-activation
GroupNorm-SiLU-conv, resampling inside the block, 1x1 shortcut), run unconditioned. That
block always adds a projection of a time embedding, so here it is built with ``temb_dim=1``
and fed a zero embedding: the projection then adds only its bias, a per-channel constant
next to the conv's own, and its (1, C) kernel never gets a gradient. The price is two
spare vectors per block; the gain is one residual block (and one ``conv_impl`` switch) for
the whole zoo.

With ``ch_mult`` of length L the latent is (image_size / 2**(L-1)) square, with
``latent_channels`` channels; the encoder returns its Gaussian's mean and log-variance,
the decoder the ``params_per_channel`` parameters per pixel channel of the likelihood.

``dtype`` ('float32' | 'bfloat16') is the compute dtype of the feature maps; the
posterior's mean and log-variance and the decoder's output leave as float32 (the ELBO,
its KL term and the likelihood are float32 sums). ``remat='block'`` recomputes each
ResBlock in the backward pass.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv3x3, compute_dtype
from networks.unet_blocks import REMAT, NormActConv, ResBlock

Array = jax.Array

# The encoder's log-variance is clipped to this range (as in latent diffusion): an
# untrained or diverging encoder can emit |logvar| in the hundreds, where exp(logvar) in
# the KL term and the reparameterised sample overflows to inf (or the std underflows to 0)
# and the loss turns NaN. e^-30 ~ 1e-13 and e^20 ~ 5e8 are far beyond any useful value.
LOGVAR_RANGE = (-30.0, 20.0)


def latent_size(image_size: int, ch_mult: Sequence[int]) -> int:
    """Side of the spatial latent; ValueError unless 2**(len(ch_mult)-1) divides image_size."""
    factor = 2 ** (len(ch_mult) - 1)
    if not ch_mult or image_size % factor:
        raise ValueError(
            f"image_size {image_size} is not divisible by 2**(len(ch_mult)-1) = {factor} "
            f"(ch_mult={tuple(ch_mult)} halves the resolution {len(ch_mult) - 1} times)"
        )
    return image_size // factor


def _block_maker(conv_impl: str, rngs: nnx.Rngs) -> Callable[..., ResBlock]:
    keys = itertools.count(1)  # dropout key indices: unused (no dropout), but distinct

    def block(cin: int, cout: int, resample: str | None = None) -> ResBlock:
        return ResBlock(
            cin, cout, temb_dim=1, dropout=0.0, skip_rescale=True, init_scale=0.0,
            key_index=next(keys), resample=resample, conv_impl=conv_impl, rngs=rngs,
        )  # fmt: skip

    return block


def _no_temb(x: Array) -> Array:
    return jnp.zeros((x.shape[0], 1), x.dtype)


def _check_remat(remat: str) -> None:
    if remat not in REMAT:
        raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}")


def _run_blocks(blocks: nnx.List, h: Array, remat: str) -> Array:
    """The ResBlocks in turn on a zero time embedding; each one rematerialised if asked."""
    temb = _no_temb(h)

    def run(b: ResBlock, h: Array, temb: Array) -> Array:
        return b(h, temb)

    if remat == "block":
        run = nnx.remat(run)
    for b in blocks:
        h = run(b, h, temb)
    return h


def _check_shape(name: str, x: Array, size: int, channels: int) -> None:
    if x.ndim != 4 or x.shape[1:] != (size, size, channels):
        raise ValueError(f"expected {name} of shape (B, {size}, {size}, {channels}), got {x.shape}")


class Encoder(nnx.Module):
    """x (B, H, W, C) -> (mean, logvar), each (B, h, w, latent_channels).

    conv -> per level: ``num_res_blocks`` ResBlocks to ``nf * mult`` channels, then a
    downsampling ResBlock (all but the last level) -> one more ResBlock ->
    GroupNorm-SiLU-conv to 2 * latent_channels.
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_remat(remat)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.latent_size = latent_size(image_size, ch_mult)
        self.image_size = image_size
        self.num_channels = num_channels
        block = _block_maker(conv_impl, rngs)
        self.conv_in = Conv3x3(num_channels, nf, impl=conv_impl, rngs=rngs)
        blocks, ch = [], nf
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks.append(block(ch, nf * mult))
                ch = nf * mult
            if i != len(ch_mult) - 1:
                blocks.append(block(ch, ch, "down"))
        blocks.append(block(ch, ch))
        self.blocks = nnx.List(blocks)
        self.head = NormActConv(ch, 2 * latent_channels, init_scale=1.0, impl=conv_impl, rngs=rngs)

    def __call__(self, x: Array, *, train: bool = False) -> tuple[Array, Array]:
        """Float32 (mean, logvar), logvar clipped to :data:`LOGVAR_RANGE`; ``train`` changes
        nothing."""
        _check_shape("x", x, self.image_size, self.num_channels)
        h = _run_blocks(self.blocks, self.conv_in(x.astype(self.dtype)), self.remat)
        mean, logvar = jnp.split(self.head(h).astype(jnp.float32), 2, axis=-1)
        return mean, jnp.clip(logvar, *LOGVAR_RANGE)


class Decoder(nnx.Module):
    """z (B, h, w, latent_channels) -> (B, H, W, num_channels * params_per_channel).

    The encoder mirrored: conv -> ResBlock -> per level, coarsest first:
    ``num_res_blocks`` ResBlocks to ``nf * mult`` channels, then an upsampling ResBlock
    (all but the finest level) -> GroupNorm-SiLU-conv. The output's last axis holds
    ``params_per_channel`` consecutive blocks of ``num_channels`` (e.g. means, then
    log-scales).
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        ch_mult: Sequence[int],
        num_res_blocks: int,
        latent_channels: int,
        params_per_channel: int,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        if params_per_channel < 1:
            raise ValueError(f"params_per_channel must be >= 1, got {params_per_channel}")
        _check_remat(remat)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.latent_size = latent_size(image_size, ch_mult)
        self.latent_channels = latent_channels
        block = _block_maker(conv_impl, rngs)
        ch = nf * ch_mult[-1]
        self.conv_in = Conv3x3(latent_channels, ch, impl=conv_impl, rngs=rngs)
        blocks = [block(ch, ch)]
        for i in reversed(range(len(ch_mult))):
            for _ in range(num_res_blocks):
                blocks.append(block(ch, nf * ch_mult[i]))
                ch = nf * ch_mult[i]
            if i != 0:
                blocks.append(block(ch, ch, "up"))
        self.blocks = nnx.List(blocks)
        self.head = NormActConv(
            ch, num_channels * params_per_channel, init_scale=1.0, impl=conv_impl, rngs=rngs
        )

    def __call__(self, z: Array, *, train: bool = False) -> Array:
        """Float32 likelihood parameters (B, H, W, C * params_per_channel); ``train`` changes
        nothing."""
        _check_shape("z", z, self.latent_size, self.latent_channels)
        h = _run_blocks(self.blocks, self.conv_in(z.astype(self.dtype)), self.remat)
        return self.head(h).astype(jnp.float32)


def from_config(config: Any, params_per_channel: int, rngs: nnx.Rngs) -> tuple[Encoder, Decoder]:
    """(encoder, decoder) from ``config.model`` (``nf``, ``ch_mult``, ``num_res_blocks``,
    ``latent_channels``, optional ``conv_impl``, ``dtype``, ``remat``) and ``config.data``
    (``image_size``, ``num_channels``); ``params_per_channel`` comes from the family's
    likelihood."""
    m = config.model
    common = dict(
        image_size=config.data.image_size,
        num_channels=config.data.num_channels,
        nf=m.nf,
        ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks,
        latent_channels=m.latent_channels,
        conv_impl=m.get("conv_impl", "auto"),
        dtype=m.get("dtype", "float32"),
        remat=m.get("remat", "none"),
        rngs=rngs,
    )
    encoder = Encoder(**common)
    return encoder, Decoder(params_per_channel=params_per_channel, **common)


__all__ = ["LOGVAR_RANGE", "Decoder", "Encoder", "from_config", "latent_size"]
