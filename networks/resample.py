"""Resampling by 2 (NHWC): nearest / average pooling, or an FIR filter as in StyleGAN2 /
NCSN++ (``upfirdn`` along each axis), and the :class:`Upsample` / :class:`Downsample`
modules that optionally follow or replace it with a 3x3 conv.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from networks.layers import Conv3x3

Array = jax.Array


def _fir_1d(x: Array, taps: np.ndarray, axis: int, up: int, down: int, pad: tuple) -> Array:
    """upfirdn along one axis: zero-stuff by ``up``, pad, convolve with taps, keep every
    ``down``-th sample. Taps are few (4), so shifted slices beat a depthwise convolution."""
    config = [(0, 0, 0)] * x.ndim
    # Interior padding stuffs the zeros; upfirdn also puts up-1 zeros after the last sample.
    config[axis] = (pad[0], pad[1] + up - 1, up - 1)
    x = jax.lax.pad(x, jnp.zeros((), x.dtype), config)
    k = len(taps)
    n_out = (x.shape[axis] - k) // down + 1
    flipped = taps[::-1]
    out = 0.0
    for j in range(k):
        sl = jax.lax.slice_in_dim(x, j, j + (n_out - 1) * down + 1, down, axis)
        out = out + float(flipped[j]) * sl
    return out


def _normalised_taps(kernel: Sequence[float]) -> np.ndarray:
    taps = np.asarray(kernel, dtype=np.float64)
    if taps.ndim != 1 or taps.size < 2:
        raise ValueError(f"fir_kernel must be a 1-D separable kernel of >= 2 taps, got {kernel}")
    return taps / taps.sum()


def upsample_2d(x: Array, fir_kernel: Sequence[float] | None = None) -> Array:
    """Double H and W: nearest neighbour, or FIR (e.g. (1, 3, 3, 1)) interpolation."""
    if fir_kernel is None:
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    taps = _normalised_taps(fir_kernel) * 2  # gain of the factor per axis keeps the DC level
    p = len(taps) - 2
    pad = ((p + 1) // 2 + 1, p // 2)
    return _fir_1d(_fir_1d(x, taps, 1, 2, 1, pad), taps, 2, 2, 1, pad)


def downsample_2d(x: Array, fir_kernel: Sequence[float] | None = None) -> Array:
    """Halve H and W: 2x2 average pooling, or FIR anti-aliasing then subsampling."""
    if fir_kernel is None:
        b, h, w, c = x.shape
        return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))
    taps = _normalised_taps(fir_kernel)
    p = len(taps) - 2
    pad = ((p + 1) // 2, p // 2)
    return _fir_1d(_fir_1d(x, taps, 1, 1, 2, pad), taps, 2, 1, 2, pad)


class Upsample(nnx.Module):
    """x2 upsampling, optionally followed by a 3x3 conv (which may change the channels).

    With FIR and a conv, score_sde fuses a transposed conv with the blur; here the blur
    comes first and a plain 3x3 conv follows, so every 3x3 conv shares one code path.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool,
        fir_kernel: Sequence[float] | None = None,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        out_ch = in_ch if out_ch is None else out_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("Upsample without a conv cannot change the channel count")
        self.fir_kernel = None if fir_kernel is None else tuple(fir_kernel)
        self.conv = Conv3x3(in_ch, out_ch, impl=impl, rngs=rngs) if with_conv else None

    def __call__(self, x: Array) -> Array:
        h = upsample_2d(x, self.fir_kernel)
        return h if self.conv is None else self.conv(h)


class Downsample(nnx.Module):
    """x2 downsampling: stride-2 3x3 conv, FIR/average pooling, or FIR then a 3x3 conv."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int | None = None,
        *,
        with_conv: bool,
        fir_kernel: Sequence[float] | None = None,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        out_ch = in_ch if out_ch is None else out_ch
        if not with_conv and out_ch != in_ch:
            raise ValueError("Downsample without a conv cannot change the channel count")
        self.fir_kernel = None if fir_kernel is None else tuple(fir_kernel)
        # Without FIR the conv itself subsamples (stride 2), as in DDPM.
        stride = 2 if fir_kernel is None else 1
        self.conv = (
            Conv3x3(in_ch, out_ch, stride=stride, impl=impl, rngs=rngs) if with_conv else None
        )

    def __call__(self, x: Array) -> Array:
        if self.conv is not None and self.fir_kernel is None:
            return self.conv(x)
        h = downsample_2d(x, self.fir_kernel)
        return h if self.conv is None else self.conv(h)
