"""The building blocks of the DDPM++ / NCSN++ U-Net (:mod:`networks.unet`), NHWC.

:class:`ResBlock` (DDPM++ / BigGAN++ residual block with a time-embedding projection,
optionally resampling), :class:`AttnBlock` (single-head self-attention),
:class:`CrossAttnBlock` (attention on a text encoder's token states), the
:class:`NormActConv` head, the progressive-input :class:`Combine`, and :class:`Level`, the
container of one resolution level. The VAE and the noise classifier reuse ``ResBlock``.
``REMAT`` lists the rematerialisation modes of the networks built from these blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv1x1, Conv3x3, Dense, GroupNorm, dropout
from networks.resample import downsample_2d, upsample_2d

Array = jax.Array

COMBINE = ("sum", "cat")
REMAT = ("none", "block")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise ValueError(f"model.{name} must be one of {tuple(choices)}, got {value!r}")


class ResBlock(nnx.Module):
    """Pre-activation residual block with a time-embedding projection (DDPM++ / BigGAN++).

    ``resample`` ('up' | 'down' | None) makes it the BigGAN-style block that resamples both
    paths inside; the skip path then gets a 1x1 conv, as it does when channels change.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        temb_dim: int,
        dropout: float,
        skip_rescale: bool,
        init_scale: float,
        key_index: int,
        resample: str | None = None,
        fir_kernel: Sequence[float] | None = None,
        conv_shortcut: bool = False,
        conv_impl: str = "auto",
        nin_impl: str = "matmul",
        rngs: nnx.Rngs,
    ):
        if resample not in (None, "up", "down"):
            raise ValueError(f"resample must be None, 'up' or 'down', got {resample!r}")
        self.resample = resample
        self.fir_kernel = None if fir_kernel is None else tuple(fir_kernel)
        self.dropout = dropout
        self.skip_rescale = skip_rescale
        # Which fold of the model's dropout key this block uses: keys stay independent of
        # the order in which blocks happen to be called.
        self.key_index = key_index
        self.norm0 = GroupNorm(in_ch)
        self.conv0 = Conv3x3(in_ch, out_ch, impl=conv_impl, rngs=rngs)
        self.temb_proj = Dense(temb_dim, out_ch, rngs=rngs)
        self.norm1 = GroupNorm(out_ch)
        self.conv1 = Conv3x3(out_ch, out_ch, init_scale=init_scale, impl=conv_impl, rngs=rngs)
        skip: Conv3x3 | Conv1x1 | None = None
        if in_ch != out_ch or resample is not None:
            if conv_shortcut and resample is None:
                skip = Conv3x3(in_ch, out_ch, impl=conv_impl, rngs=rngs)
            else:
                skip = Conv1x1(in_ch, out_ch, impl=nin_impl, rngs=rngs)
        self.skip = skip

    def _resample(self, x: Array) -> Array:
        if self.resample == "up":
            return upsample_2d(x, self.fir_kernel)
        if self.resample == "down":
            return downsample_2d(x, self.fir_kernel)
        return x

    def __call__(self, x: Array, temb_act: Array, key: Array | None = None) -> Array:
        """``temb_act`` is the already-activated time embedding; ``key`` enables dropout."""
        h = jax.nn.silu(self.norm0(x))
        h = self._resample(h)
        x = self._resample(x)
        h = self.conv0(h)
        h = h + self.temb_proj(temb_act)[:, None, None, :].astype(h.dtype)
        h = jax.nn.silu(self.norm1(h))
        h = dropout(h, self.dropout, key)
        h = self.conv1(h)
        if self.skip is not None:
            x = self.skip(x)
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class AttnBlock(nnx.Module):
    """Single-head self-attention over all H*W positions, residual, NHWC."""

    def __init__(
        self,
        ch: int,
        *,
        skip_rescale: bool,
        init_scale: float,
        nin_impl: str = "matmul",
        rngs: nnx.Rngs,
    ):
        self.skip_rescale = skip_rescale
        self.norm = GroupNorm(ch)
        # One fused q|k|v projection (one GEMM). Scale 2 over fan_avg = 2C gives variance
        # 1/C, the same as three separate (C, C) layers with scale 1.
        self.qkv = Conv1x1(ch, 3 * ch, init_scale=2.0, impl=nin_impl, rngs=rngs)
        self.proj = Conv1x1(ch, ch, init_scale=init_scale, impl=nin_impl, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b, hgt, wid, c = x.shape
        qkv = self.qkv(self.norm(x)).reshape(b, hgt * wid, 3, c)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * (c**-0.5)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = self.proj(jnp.einsum("bij,bjc->bic", w, v).reshape(x.shape))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h


class NormActConv(nnx.Module):
    """GroupNorm -> SiLU -> 3x3 conv: the output head and the progressive pyramid heads."""

    def __init__(self, in_ch: int, out_ch: int, *, init_scale: float, impl: str, rngs: nnx.Rngs):
        self.norm = GroupNorm(in_ch)
        self.conv = Conv3x3(in_ch, out_ch, init_scale=init_scale, impl=impl, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        return self.conv(jax.nn.silu(self.norm(x)))


class Combine(nnx.Module):
    """Merges the progressive input pyramid into the feature map: 1x1 conv, then sum/cat."""

    def __init__(self, in_ch: int, out_ch: int, *, method: str, impl: str, rngs: nnx.Rngs):
        _check_choice("progressive_combine", method, COMBINE)
        self.method = method
        self.proj = Conv1x1(in_ch, out_ch, impl=impl, rngs=rngs)

    def __call__(self, pyramid: Array, h: Array) -> Array:
        p = self.proj(pyramid)
        return p + h if self.method == "sum" else jnp.concatenate([h, p], axis=-1)


class Level(nnx.Module):
    """The modules of one resolution level; the U-Net's forward pass wires them together.

    Unused slots are None. ``resample`` is an Up/Downsample or a resampling ResBlock.
    """

    def __init__(self) -> None:
        self.blocks = nnx.List([])
        self.attns = nnx.List([])
        self.crosses = nnx.List([])  # cross-attention on the text, after each attention
        # nnx.data: these slots start empty and may be filled with modules later.
        self.resample: nnx.Module | None = nnx.data(None)
        self.pyramid_resample: nnx.Module | None = nnx.data(None)
        self.pyramid_head: NormActConv | None = nnx.data(None)
        self.combine: Combine | None = nnx.data(None)


class CrossAttnBlock(nnx.Module):
    """Cross-attention of the feature map on a text encoder's token states (Imagen /
    Stable Diffusion): queries from the normalised pixels, keys and values from the tokens,
    padding tokens masked out, a zero-initialised projection (the block starts as the
    identity), residual. ``text_dim`` is the token states' width."""

    def __init__(self, ch: int, text_dim: int, *, skip_rescale: bool, init_scale: float,
                 nin_impl: str = "matmul", rngs: nnx.Rngs):
        self.skip_rescale = skip_rescale
        self.norm = GroupNorm(ch)
        self.q = Conv1x1(ch, ch, impl=nin_impl, rngs=rngs)
        self.kv = Dense(text_dim, 2 * ch, init_scale=2.0, rngs=rngs)
        self.proj = Conv1x1(ch, ch, init_scale=init_scale, impl=nin_impl, rngs=rngs)

    def __call__(self, x: Array, tokens: Array, mask: Array) -> Array:
        """`x` (B, H, W, C); `tokens` (B, L, text_dim); `mask` (B, L), True = a token."""
        b, hgt, wid, c = x.shape
        q = self.q(self.norm(x)).reshape(b, hgt * wid, c)
        kv = self.kv(tokens.astype(x.dtype))
        k, v = kv[..., :c], kv[..., c:]
        logits = jnp.einsum("bic,bjc->bij", q, k).astype(jnp.float32) * (c**-0.5)
        logits = jnp.where(mask[:, None, :], logits, jnp.finfo(jnp.float32).min)
        w = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
        h = self.proj(jnp.einsum("bij,bjc->bic", w, v).reshape(x.shape))
        return (x + h) / math.sqrt(2.0) if self.skip_rescale else x + h
