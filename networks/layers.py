"""Building blocks shared by the network zoo (NHWC throughout): convolutions, dense and
embedding layers, GroupNorm, dropout, noise-level embeddings and the parameter
initialisers. Resampling by 2 lives in :mod:`networks.resample`.

The 3x3 and 1x1 convolutions are the hot spots of every U-Net here, so each has two
interchangeable implementations over the *same* parameters:

* ``'xla'``: ``jax.lax.conv_general_dilated`` (what accelerators are tuned for);
* ``'matmul'``: the convolution written as one dense matrix product (3x3: nine shifted
  slices concatenated on channels, then a (9*Cin, Cout) matmul). On CPU it wins on the
  smallest feature maps (2x2).

``'auto'`` resolves through :func:`resolve_conv_impl` at construction time; on CPU a 3x3
convolution then picks its form per call from the feature map's size, and
:func:`compiler_options` picks XLA:CPU's convolution kernels for a whole program.

Mixed precision: parameters are float32; a layer computes in the dtype of its *input*
(its parameters are cast to it), so a network sets its compute dtype once by casting what
it feeds its first layer (:func:`compute_dtype`). GroupNorm computes its statistics in
float32 whatever the input.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Array = jax.Array

CONV_IMPLS = ("auto", "xla", "matmul")
# On CPU the matmul form of the 1x1 convolution (a plain GEMM) and of the small 3x3 ones is
# faster; accelerators get XLA's convolution, which maps onto their conv units without the
# 9x patch tensor.
_AUTO_IMPL = {"cpu": "matmul"}
_AUTO_DEFAULT = "xla"
# Which 3x3 convolutions 'auto' gives XLA's convolution on CPU, measured on whole train steps
# (bench/bench_train.py; single-convolution timings mislead here): every map of 16 pixels or
# more, whatever the stride. Below that (2x2 maps) the patches and one matmul win.
_AUTO_XLA_MIN_PIXELS = 16
# XLA:CPU gives both matmuls and convolutions to YNNPACK by default. On small images XLA's own
# convolution kernels are faster, so programs over images of at most this many pixels let
# YNNPACK take the matrix products only (see `compiler_options`). On larger maps YNNPACK's
# convolutions win by far: CIFAR-10's DDPM++ step took 1.65x as long without them.
_SMALL_IMAGE_MAX_PIXELS = 128
_SMALL_IMAGE_CPU_OPTIONS = (
    ("xla_cpu_experimental_ynn_fusion_type", "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"),
)


DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str) -> jnp.dtype:
    """The activation dtype named by ``model.dtype`` ('float32' | 'bfloat16')."""
    if name not in DTYPES:
        raise ValueError(f"model.dtype must be one of {tuple(DTYPES)}, got {name!r}")
    return DTYPES[name]


def compiler_options(image_shape: Sequence[int]) -> dict[str, str]:
    """XLA compiler options for a program that runs the zoo on (H, W, ...) images.

    Pass them to the ``jax.jit`` that compiles a whole train or sampling step. On CPU, for
    images of at most 128 pixels, they keep XLA's own convolution kernels (about 20% off the
    digits train steps, with the 'auto' rule above); everywhere else they are empty. A jaxlib
    that does not know the option gets none.
    """
    if (jax.default_backend() != "cpu" or len(image_shape) < 2
            or image_shape[0] * image_shape[1] > _SMALL_IMAGE_MAX_PIXELS):
        return {}
    return dict(_SMALL_IMAGE_CPU_OPTIONS) if _cpu_accepts(_SMALL_IMAGE_CPU_OPTIONS) else {}


@functools.cache
def _cpu_accepts(options: tuple[tuple[str, str], ...]) -> bool:
    """Whether this jaxlib's CPU compiler knows these options (their names and enum values
    change between releases)."""
    try:
        jax.jit(lambda x: x + 1, compiler_options=dict(options)).lower(np.float32(0)).compile()
    except jax.errors.JaxRuntimeError:
        return False
    return True


def resolve_conv_impl(impl: str) -> str:
    """Map a ``conv_impl`` option to ``'xla'`` or ``'matmul'`` ('auto' looks at the backend)."""
    if impl not in CONV_IMPLS:
        raise ValueError(f"conv_impl must be one of {CONV_IMPLS}, got {impl!r}")
    if impl == "auto":
        return _AUTO_IMPL.get(jax.default_backend(), _AUTO_DEFAULT)
    return impl


# ----------------------------------------------------------------------------------------
# Initialisation
#
# XLA:CPU compiles jax.random once per output shape, and with (the default) partitionable
# threefry a 4-D shape takes seconds: eagerly building a U-Net with dozens of parameter
# shapes took ~20 s on two cores before any training. So every random parameter is cut from
# fixed-size 1-D blocks drawn by a single compiled kernel, and constants come from numpy.

_BLOCK = 1 << 14


def _block(key: Array, index: Array, dist: str) -> Array:
    k = jax.random.fold_in(key, index)
    if dist == "normal":
        return jax.random.normal(k, (_BLOCK,))
    return jax.random.uniform(k, (_BLOCK,))


_random_block = jax.jit(_block, static_argnames="dist")


def param_key(rngs: nnx.Rngs) -> Array:
    """The next key of ``rngs``' params stream: ``rngs.params()``, the same keys in the same
    order, at a cost that does not grow with the network.

    Under tracing (an abstract build, ``nnx.eval_shape``) ``rngs.params()`` writes the
    stream's count through an indexed assignment, and jax before 0.12 answers the
    ``sharding`` lookup that assignment makes on a tracer with an error message that scans
    the whole trace so far: quadratic in the number of layers (1.9 s of a CIFAR-10 DDPM++
    family's abstract builds on the 2-core CPU). Replacing the count's value whole skips it.
    """
    stream = rngs.params
    count = stream.count.get_value()
    key = jax.random.fold_in(stream.key.get_value(), count)
    stream.count.set_value(count + 1)
    return key


def draw(key: Array, shape: Sequence[int], dist: str = "uniform") -> Array | np.ndarray:
    """U[0, 1) or N(0, 1) float32 samples of ``shape``, a pure function of ``key``.

    With a concrete key the blocks are assembled on the host (numpy, one compiled kernel
    for every parameter). A traced key (initialisation under ``jit`` / ``eval_shape``) draws
    the same numbers with one vmapped kernel per parameter: a loop over the blocks would
    put thousands of random-number kernels into the graph (a CIFAR-10 U-Net's init did not
    finish lowering in minutes).
    """
    n = math.prod(shape)
    num_blocks = -(-n // _BLOCK)
    if isinstance(key, jax.core.Tracer):
        blocks = jax.vmap(lambda i: _block(key, i, dist))(jnp.arange(num_blocks))
        return blocks.reshape(-1)[:n].reshape(shape)
    blocks = [np.asarray(_random_block(key, i, dist)) for i in range(num_blocks)]
    return np.concatenate(blocks)[:n].reshape(shape)


def const(shape: Sequence[int], value: float = 0.0) -> Array:
    """A float32 constant parameter value (built by numpy: no per-shape compilation)."""
    return jnp.asarray(np.full(shape, value, np.float32))


def default_init(scale: float = 1.0) -> Callable[[Array, Sequence[int]], Array]:
    """DDPM's variance-scaling initialiser: uniform, variance ``scale / fan_avg``.

    Fans follow ``jax.nn.initializers`` (in = shape[-2], out = shape[-1], times the
    receptive field). ``scale == 0`` gives a tiny but non-zero scale, so a "zero" output
    layer still passes gradients to its kernel from the very first step.
    """
    scale = 1e-10 if scale == 0 else scale

    def init(key: Array, shape: Sequence[int]) -> Array:
        receptive = math.prod(shape[:-2])
        fan_avg = (shape[-2] + shape[-1]) * receptive / 2
        limit = math.sqrt(3.0 * scale / fan_avg)
        return jnp.asarray((2.0 * draw(key, shape) - 1.0) * limit, jnp.float32)

    return init


_DIMS = ("NHWC", "HWIO", "NHWC")


class Conv3x3(nnx.Module):
    """3x3 convolution, zero padding 1, stride 1 or 2, with a swappable implementation.

    Parameters are ``kernel`` (3, 3, Cin, Cout) and ``bias`` (Cout,) whatever the
    implementation, so checkpoints move freely between backends.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        stride: int = 1,
        use_bias: bool = True,
        init_scale: float = 1.0,
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if stride not in (1, 2):
            raise ValueError(f"Conv3x3 supports stride 1 or 2, got {stride}")
        self.stride = stride
        self.impl = resolve_conv_impl(impl)
        self.auto = impl == "auto"
        self.kernel = nnx.Param(default_init(init_scale)(param_key(rngs), (3, 3, in_ch, out_ch)))
        self.bias = nnx.Param(const((out_ch,))) if use_bias else None

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...].astype(x.dtype)
        if self.impl == "xla" or (self.auto and self._auto_picks_xla(x.shape[1] * x.shape[2])):
            y = jax.lax.conv_general_dilated(
                x, kernel, (self.stride, self.stride), ((1, 1), (1, 1)), dimension_numbers=_DIMS
            )
        else:
            y = _conv3x3_matmul(x, kernel, self.stride)
        if self.bias is not None:
            y = y + self.bias[...].astype(y.dtype)
        return y

    @staticmethod
    def _auto_picks_xla(pixels: int) -> bool:
        return pixels >= _AUTO_XLA_MIN_PIXELS


def _conv3x3_matmul(x: Array, kernel: Array, stride: int) -> Array:
    """3x3 conv as im2col + one GEMM; patch order (dy, dx, cin) matches kernel.reshape."""
    _, h, w, c = x.shape
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    rows = [slice(dy, dy + (ho - 1) * stride + 1, stride) for dy in range(3)]
    cols = [slice(dx, dx + (wo - 1) * stride + 1, stride) for dx in range(3)]
    patches = jnp.concatenate([xp[:, r, c] for r in rows for c in cols], axis=-1)
    return jnp.dot(patches, kernel.reshape(9 * c, kernel.shape[-1]))


class Conv1x1(nnx.Module):
    """1x1 convolution ("network in network"): a dense layer over the channel axis.

    ``kernel`` is (Cin, Cout). ``impl='xla'`` routes it through ``conv_general_dilated``;
    only the benchmark wants that, the matmul is the natural form everywhere.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        init_scale: float = 1.0,
        impl: str = "matmul",
        rngs: nnx.Rngs,
    ):
        self.impl = resolve_conv_impl(impl)
        self.kernel = nnx.Param(default_init(init_scale)(param_key(rngs), (in_ch, out_ch)))
        self.bias = nnx.Param(const((out_ch,)))

    def __call__(self, x: Array) -> Array:
        kernel = self.kernel[...].astype(x.dtype)
        if self.impl == "xla" and x.ndim == 4:
            y = jax.lax.conv_general_dilated(
                x, kernel[None, None], (1, 1), "VALID", dimension_numbers=_DIMS
            )
        else:
            y = jnp.dot(x, kernel)
        return y + self.bias[...].astype(y.dtype)


class Dense(Conv1x1):
    """A dense layer with DDPM initialisation (same maths as :class:`Conv1x1`)."""

    def __init__(self, in_dim: int, out_dim: int, *, init_scale: float = 1.0, rngs: nnx.Rngs):
        super().__init__(in_dim, out_dim, init_scale=init_scale, impl="matmul", rngs=rngs)


class Embed(nnx.Module):
    """A learned lookup table (e.g. class labels): ``table`` (num, dim), DDPM init."""

    def __init__(self, num: int, dim: int, *, rngs: nnx.Rngs):
        self.table = nnx.Param(default_init()(param_key(rngs), (num, dim)))

    def __call__(self, ids: Array) -> Array:
        return jnp.take(self.table[...], jnp.asarray(ids, jnp.int32), axis=0)


def num_groups(channels: int) -> int:
    """score_sde's GroupNorm group count, min(C // 4, 32), made to divide C."""
    return math.gcd(channels, max(1, min(channels // 4, 32)))


class GroupNorm(nnx.Module):
    """Group normalisation over (H, W, channels-in-group) of NHWC input, eps 1e-6.

    Statistics and the affine map are computed in float32; the output has x's dtype.
    """

    def __init__(self, channels: int, *, groups: int | None = None, eps: float = 1e-6):
        self.groups = num_groups(channels) if groups is None else groups
        if channels % self.groups:
            raise ValueError(f"{self.groups} groups do not divide {channels} channels")
        self.eps = eps
        self.scale = nnx.Param(const((channels,), 1.0))
        self.bias = nnx.Param(const((channels,)))

    def __call__(self, x: Array) -> Array:
        # Every reduction runs over the spatial axes with the channels kept innermost, and
        # the groups are then averaged on the tiny (N, C) result: XLA:CPU reduces
        # (N, H, W, G, C/G) over (H, W, C/G) several times slower, forward and backward
        # (2-4x on the U-Nets' shapes; same values to float rounding).
        spatial = tuple(range(1, x.ndim - 1))
        xf = x.astype(jnp.float32)
        centred = xf - self._group_mean(jnp.mean(xf, axis=spatial), x.ndim)
        # Two-pass variance: E[x^2] - E[x]^2 loses precision on large-mean activations.
        var = self._group_mean(jnp.mean(jnp.square(centred), axis=spatial), x.ndim)
        y = centred * (jax.lax.rsqrt(var + self.eps) * self.scale[...]) + self.bias[...]
        return y.astype(x.dtype)

    def _group_mean(self, per_channel: Array, ndim: int) -> Array:
        """(N, C) per-channel means -> each channel's group mean, shaped (N, 1, ..., C) to
        broadcast against an input of ``ndim`` axes."""
        n, c = per_channel.shape
        size = c // self.groups
        g = per_channel.reshape(n, self.groups, size).mean(axis=-1, keepdims=True)
        return jnp.broadcast_to(g, (n, self.groups, size)).reshape(n, *[1] * (ndim - 2), c)


def dropout(x: Array, rate: float, key: Array | None) -> Array:
    """Inverted dropout as a pure function of ``key``; ``key=None`` means evaluation mode."""
    if key is None or rate == 0.0:
        return x
    keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
    return jnp.where(keep, x / (1.0 - rate), 0.0)


# ----------------------------------------------------------------------------------------
# Noise-level embeddings


def sinusoidal_embedding(c_noise: Array, dim: int, max_positions: float = 10_000.0) -> Array:
    """DDPM/Transformer positional embedding of a (B,) float input, (B, dim) output."""
    half = dim // 2
    freqs = jnp.exp(-math.log(max_positions) * jnp.arange(half) / max(half - 1, 1))
    args = c_noise.astype(jnp.float32)[:, None] * freqs[None, :]
    emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
    return jnp.pad(emb, ((0, 0), (0, dim - 2 * half)))


class NoiseEmbedding(nnx.Module):
    """Embeds the noise-conditioning input c_noise (B,) into (B, dim).

    ``'positional'``: DDPM sinusoids (suits VP's c_noise = 999 t). ``'fourier'``: random
    Gaussian Fourier features with std ``fourier_scale`` (NCSN++, suits VE's log sigma).
    The Fourier frequencies are a Param so that the model state is one pytree, but they get
    no gradient (as in score_sde): an optimiser without weight decay leaves them alone.
    """

    KINDS = ("fourier", "positional")

    def __init__(self, kind: str, dim: int, *, fourier_scale: float = 16.0, rngs: nnx.Rngs):
        if kind not in self.KINDS:
            raise ValueError(f"embedding_type must be one of {self.KINDS}, got {kind!r}")
        self.kind = kind
        self.dim = dim
        self.freqs = (
            nnx.Param(jnp.asarray(fourier_scale * draw(param_key(rngs), (dim // 2,), "normal")))
            if kind == "fourier"
            else None
        )

    def __call__(self, c_noise: Array) -> Array:
        if self.freqs is None:
            return sinusoidal_embedding(c_noise, self.dim)
        w = jax.lax.stop_gradient(self.freqs[...])
        args = 2 * jnp.pi * c_noise.astype(jnp.float32)[:, None] * w[None, :]
        emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
        return jnp.pad(emb, ((0, 0), (0, self.dim - emb.shape[-1])))
