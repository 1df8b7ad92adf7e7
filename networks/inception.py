"""Inception-v3 with the FID architecture (pytorch-fid's ``FIDInceptionV3``), NHWC, Flax NNX.

This is the network of TTUR's FID code (the TensorFlow graph of 2015-12-05) as ported by
pytorch-fid, so its weights file ``pt_inception-2015-12-05-6726825d.pth`` loads unchanged
(see ``evaluation.inception``). It differs from torchvision's Inception-v3 in three ways,
all of them in the pooling branch of the mixed blocks:

* Mixed_5b-5d, 6b-6e and 7b average-pool without counting the zero padding (TF's rule);
* Mixed_7c max-pools instead (a quirk of that graph, kept because the weights expect it);
* there are no aux logits and no dropout; the classifier is 2048 -> 1008.

Attribute names follow the torch ``state_dict`` keys: ``Mixed_5b.branch1x1.conv.kernel``
is ``Mixed_5b.branch1x1.conv.weight``, ``.bn.{scale, bias, mean, var}`` are
``.bn.{weight, bias, running_mean, running_var}``; :func:`torch_key` spells the rule out.
Kernels are HWIO (torch: OIHW) and the fc kernel is (in, out) (torch: (out, in)).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from networks.layers import const, default_init, param_key

Array = jax.Array

FEATURE_DIM = 2048
NUM_CLASSES = 1008
INPUT_SIZE = 299
BN_EPS = 1e-3

_DIMS = ("NHWC", "HWIO", "NHWC")
# A feature network is a measuring instrument: full float32 passes even where the backend
# would default to TF32 / bf16 ones (GPU, TPU), so that scores do not depend on the device.
_PRECISION = jax.lax.Precision.HIGHEST


def _pair(v: int | Sequence[int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


class BatchNorm(nnx.Module):
    """Inference-mode batch norm with stored statistics (torch ``BatchNorm2d``, eps 1e-3)."""

    def __init__(self, channels: int, *, eps: float = BN_EPS):
        self.eps = eps
        self.scale = nnx.Param(const((channels,), 1.0))
        self.bias = nnx.Param(const((channels,)))
        self.mean = nnx.BatchStat(const((channels,)))
        self.var = nnx.BatchStat(const((channels,), 1.0))

    def affine(self) -> tuple[Array, Array]:
        """(mult, shift) with ``bn(y) == y * mult + shift`` per channel."""
        mult = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.eps)
        return mult, self.bias[...] - self.mean[...] * mult


class Conv(nnx.Module):
    """Bias-free 2-D convolution, kernel (kh, kw, Cin, Cout), symmetric zero padding."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int],
        *,
        stride: int = 1,
        padding: int | Sequence[int] = 0,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size)
        self.stride = stride
        self.padding = _pair(padding)
        self.kernel = nnx.Param(default_init()(param_key(rngs), (kh, kw, in_ch, out_ch)))

    def __call__(self, x: Array, out_scale: Array | None = None) -> Array:
        """The convolution of ``x``, with the kernel's output channels scaled by ``out_scale``."""
        kernel = self.kernel[...]
        if out_scale is not None:
            kernel = kernel * out_scale
        if kernel.shape[:2] == (1, 1) and self.stride == 1:
            return jnp.dot(x, kernel[0, 0], precision=_PRECISION)  # a 1x1 conv is a matmul
        (ph, pw), s = self.padding, self.stride
        return jax.lax.conv_general_dilated(
            x, kernel, (s, s), ((ph, ph), (pw, pw)), dimension_numbers=_DIMS, precision=_PRECISION
        )


class BasicConv2d(nnx.Module):
    """conv (no bias) -> batch norm (running statistics) -> ReLU.

    The batch norm is folded into the kernel and a shift: one pass over the activations
    instead of two, the same function up to float rounding.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel_size: int | Sequence[int] = 1,
        *,
        stride: int = 1,
        padding: int | Sequence[int] = 0,
        rngs: nnx.Rngs,
    ):
        self.conv = Conv(in_ch, out_ch, kernel_size, stride=stride, padding=padding, rngs=rngs)
        self.bn = BatchNorm(out_ch)

    def __call__(self, x: Array) -> Array:
        mult, shift = self.bn.affine()
        return jax.nn.relu(self.conv(x, mult) + shift)


def max_pool(x: Array, size: int = 3, stride: int = 2, padding: int = 0) -> Array:
    """Max pooling over H, W; padding counts as -inf (torch ``max_pool2d``, floor mode)."""
    pad = ((0, 0), (padding, padding), (padding, padding), (0, 0))
    window, strides = (1, size, size, 1), (1, stride, stride, 1)
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, strides, pad)


def avg_pool_3x3(x: Array) -> Array:
    """3x3 stride-1 average pooling with padding 1 that does not count the padding.

    = torch ``avg_pool2d(x, 3, 1, 1, count_include_pad=False)``, TF's "SAME" average.
    """
    _, h, w, _ = x.shape
    pad = ((0, 0), (1, 1), (1, 1), (0, 0))
    total = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), pad)

    # Valid taps per position: 3 inside, 2 on a border row or column (static, numpy).
    def taps(n: int) -> np.ndarray:
        t = np.full(n, 3.0, np.float32)
        t[0] -= 1
        t[-1] -= 1
        return np.maximum(t, 1.0)  # n == 1: one valid tap

    count = np.outer(taps(h), taps(w))[None, :, :, None]
    return total / count


class InceptionA(nnx.Module):
    """Mixed_5b/5c/5d: 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool(no pad count)-1x1."""

    def __init__(self, in_ch: int, pool_features: int, *, rngs: nnx.Rngs):
        self.branch1x1 = BasicConv2d(in_ch, 64, rngs=rngs)
        self.branch5x5_1 = BasicConv2d(in_ch, 48, rngs=rngs)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, pool_features, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b5, b3, bp], axis=-1)


class InceptionB(nnx.Module):
    """Mixed_6a (35 -> 17): 3x3/2 | 1x1-3x3-3x3/2 | maxpool 3/2."""

    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3 = BasicConv2d(in_ch, 384, 3, stride=2, rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 64, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return jnp.concatenate([self.branch3x3(x), b3, max_pool(x)], axis=-1)


class InceptionC(nnx.Module):
    """Mixed_6b-6e: 1x1 | 1x1-1x7-7x1 | 1x1-7x1-1x7-7x1-1x7 | avgpool(no pad count)-1x1."""

    def __init__(self, in_ch: int, channels_7x7: int, *, rngs: nnx.Rngs):
        c7 = channels_7x7
        row, col = dict(padding=(0, 3)), dict(padding=(3, 0))  # (1, 7) and (7, 1) kernels
        self.branch1x1 = BasicConv2d(in_ch, 192, rngs=rngs)
        self.branch7x7_1 = BasicConv2d(in_ch, c7, rngs=rngs)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), **row, rngs=rngs)
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), **col, rngs=rngs)
        self.branch7x7dbl_1 = BasicConv2d(in_ch, c7, rngs=rngs)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), **col, rngs=rngs)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), **row, rngs=rngs)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), **col, rngs=rngs)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), **row, rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, 192, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4):
            d = layer(d)
        bp = self.branch_pool(avg_pool_3x3(x))
        return jnp.concatenate([self.branch1x1(x), b7, self.branch7x7dbl_5(d), bp], axis=-1)


class InceptionD(nnx.Module):
    """Mixed_7a (17 -> 8): 1x1-3x3/2 | 1x1-1x7-7x1-3x3/2 | maxpool 3/2."""

    def __init__(self, in_ch: int, *, rngs: nnx.Rngs):
        self.branch3x3_1 = BasicConv2d(in_ch, 192, rngs=rngs)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
        self.branch7x7x3_1 = BasicConv2d(in_ch, 192, rngs=rngs)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_1(x)
        for layer in (self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
            b7 = layer(b7)
        return jnp.concatenate([b3, b7, max_pool(x)], axis=-1)


class InceptionE(nnx.Module):
    """Mixed_7b/7c: 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1.

    ``pool='avg'`` (Mixed_7b) averages without counting padding; ``pool='max'`` (Mixed_7c)
    is the FID graph's 3x3 stride-1 max pool.
    """

    def __init__(self, in_ch: int, *, pool: str, rngs: nnx.Rngs):
        if pool not in ("avg", "max"):
            raise ValueError(f"InceptionE pool must be 'avg' or 'max', got {pool!r}")
        self.pool = pool
        self.branch1x1 = BasicConv2d(in_ch, 320, rngs=rngs)
        self.branch3x3_1 = BasicConv2d(in_ch, 384, rngs=rngs)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch3x3dbl_1 = BasicConv2d(in_ch, 448, rngs=rngs)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
        self.branch_pool = BasicConv2d(in_ch, 192, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = avg_pool_3x3(x) if self.pool == "avg" else max_pool(x, 3, 1, 1)
        branches = [
            self.branch1x1(x),
            self.branch3x3_2a(b3),
            self.branch3x3_2b(b3),
            self.branch3x3dbl_3a(d),
            self.branch3x3dbl_3b(d),
            self.branch_pool(pooled),
        ]
        return jnp.concatenate(branches, axis=-1)


class Linear(nnx.Module):
    """Dense layer, kernel (in, out) (torch ``Linear.weight`` is (out, in))."""

    def __init__(self, in_dim: int, out_dim: int, *, rngs: nnx.Rngs):
        self.kernel = nnx.Param(default_init()(param_key(rngs), (in_dim, out_dim)))
        self.bias = nnx.Param(const((out_dim,)))

    def __call__(self, x: Array) -> Array:
        return jnp.dot(x, self.kernel[...], precision=_PRECISION) + self.bias[...]


class FIDInceptionV3(nnx.Module):
    """The FID Inception-v3: preprocessed images -> pool3 features and 1008-way logits.

    ``model(x)`` takes float32 (N, H, W, 3) in [-1, 1], H and W >= 75 (299 for FID, see
    ``evaluation.inception.preprocess``) and returns ``{'pool': (N, 2048), 'logits':
    (N, 1008)}``: the global average pool after Mixed_7c ("pool_3" in TTUR) and the fc
    layer on it (softmax of those logits is what the Inception Score uses).
    Random initialisation only fixes shapes; the numbers come from the weights file.
    """

    def __init__(self, *, rngs: nnx.Rngs):
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, rngs=rngs)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
        self.Mixed_5b = InceptionA(192, pool_features=32, rngs=rngs)
        self.Mixed_5c = InceptionA(256, pool_features=64, rngs=rngs)
        self.Mixed_5d = InceptionA(288, pool_features=64, rngs=rngs)
        self.Mixed_6a = InceptionB(288, rngs=rngs)
        self.Mixed_6b = InceptionC(768, channels_7x7=128, rngs=rngs)
        self.Mixed_6c = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6d = InceptionC(768, channels_7x7=160, rngs=rngs)
        self.Mixed_6e = InceptionC(768, channels_7x7=192, rngs=rngs)
        self.Mixed_7a = InceptionD(768, rngs=rngs)
        self.Mixed_7b = InceptionE(1280, pool="avg", rngs=rngs)
        self.Mixed_7c = InceptionE(2048, pool="max", rngs=rngs)
        self.fc = Linear(FEATURE_DIM, NUM_CLASSES, rngs=rngs)

    def __call__(self, x: Array) -> dict[str, Array]:
        if x.ndim != 4 or x.shape[-1] != 3 or min(x.shape[1:3]) < 75:
            raise ValueError(f"FIDInceptionV3 wants (N, H>=75, W>=75, 3) input, got {x.shape}")
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = max_pool(x)
        x = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        pool = jnp.mean(x, axis=(1, 2))
        return {"pool": pool, "logits": self.fc(pool)}


# ----------------------------------------------------------------------------------------
# The correspondence with pytorch-fid's state_dict

_TORCH_LEAF = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def torch_key(path: Sequence[Any]) -> str:
    """The state_dict key of the variable at nnx ``path``.

    ('Mixed_5b', 'branch1x1', 'conv', 'kernel') -> 'Mixed_5b.branch1x1.conv.weight'.
    """
    *modules, leaf = (str(p) for p in path)
    return ".".join([*modules, _TORCH_LEAF[leaf]])


def _to_torch_axes(path: Sequence[Any], ndim: int) -> tuple[int, ...]:
    """Axis order taking our layout to torch's: HWIO -> OIHW, (in, out) -> (out, in)."""
    if str(path[-1]) == "kernel":
        return (3, 2, 0, 1) if ndim == 4 else (1, 0)
    return tuple(range(ndim))


def to_torch_layout(path: Sequence[Any], value: np.ndarray) -> np.ndarray:
    """Our array at ``path`` in the layout its state_dict entry has."""
    return np.transpose(value, _to_torch_axes(path, np.ndim(value)))


def from_torch_layout(path: Sequence[Any], value: np.ndarray) -> np.ndarray:
    """A state_dict array in the layout of our variable at ``path`` (OIHW -> HWIO, ...)."""
    return np.transpose(value, np.argsort(_to_torch_axes(path, np.ndim(value))))


def torch_state_dict_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
    """Every state_dict key the model's variables correspond to, with its torch shape."""
    shapes = {}
    for path, var in nnx.to_flat_state(nnx.state(model)):
        shape = tuple(var.get_value().shape)
        shapes[torch_key(path)] = tuple(shape[i] for i in _to_torch_axes(path, len(shape)))
    return shapes
