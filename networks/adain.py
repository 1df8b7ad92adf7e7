"""Arbitrary style transfer in real time with adaptive instance normalisation (AdaIN;
Huang and Belongie, ICCV 2017): the AdaIN operation and the decoder that mirrors an
encoder. Which encoders there are (a pretrained feature CNN, frozen) is
:mod:`style.feedforward`'s registry; any ``encoder(rgb01_nhwc, layers=[...]) -> {layer:
activations}`` with VGG's layer names (``conv1_1``, ``relu1_1``, ..., ``pool1``,
``conv2_1``, ...) will do.

* :func:`adain`: the content features' channel-wise mean and standard deviation (over
  height and width) replaced by the style features': ``sigma(s) (c - mu(c)) / sigma(c) +
  mu(s)``.
* :class:`Decoder`: the encoder up to the AdaIN layer mirrored (:func:`mirror_plan`): each
  convolution becomes one from its output width back to its input width followed by a
  ReLU (the last, to RGB, has none), each halving of the resolution a 2x nearest-neighbour
  upsampling; 3x3 convolutions with reflection padding (the paper's) or zero padding. For
  VGG-19 up to ``relu4_1`` that is the paper's decoder exactly.
* :class:`VGGShaped`: a VGG-shaped CNN of any widths with random weights, the stand-in for
  a pretrained encoder in tests and timings.
* :func:`used_weights` / :func:`with_weights`: an encoder's weights as plain arrays (those
  an AdaIN model computes with), and an abstract encoder filled with them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from errors import UserError
from networks import vgg
from networks.layers import (
    Conv3x3,
    const,
    default_init,
    param_key,
    resolve_conv_impl,
)

Array = jax.Array

EPS = 1e-5  # added to the variance before the square root (the paper's implementation)
_DIMS = ("NHWC", "HWIO", "NHWC")
# The decoder's 'auto' rule on CPU, measured on its own steps (bench/style_adain.py): the
# patches and one matmul up to this many pixels (padded), XLA's convolution past it.
_AUTO_MATMUL_MAX_PIXELS = 128
_CONV = re.compile(r"conv(\d+)_(\d+)")


# ----------------------------------------------------------------------------------------
# AdaIN


def mean_std(x: Array, eps: float = EPS) -> tuple[Array, Array]:
    """Channel-wise mean and standard deviation over height and width of (N, H, W, C)
    features, each (N, 1, 1, C); the std is ``sqrt(var + eps)`` (biased variance)."""
    x = jnp.asarray(x, jnp.float32)
    mean = jnp.mean(x, axis=(1, 2), keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=(1, 2), keepdims=True)
    return mean, jnp.sqrt(var + eps)


def adain(content: Array, style: Array, eps: float = EPS) -> Array:
    """AdaIN(c, s) = sigma(s) (c - mu(c)) / sigma(c) + mu(s), channel-wise over height and
    width; ``content`` (N, H, W, C) and ``style`` (N or 1, h, w, C) may differ in size."""
    c_mean, c_std = mean_std(content, eps)
    s_mean, s_std = mean_std(style, eps)
    return (content - c_mean) / c_std * s_std + s_mean


# ----------------------------------------------------------------------------------------
# A stand-in encoder


class VGGShaped(nnx.Module):
    """A VGG-shaped feature CNN of any widths, with random weights: blocks of 3x3
    convolutions (zero padding), each followed by a ReLU, a 2x2 pooling after each block,
    VGG's layer names and call; ImageNet normalisation of RGB [0, 1] input. The stand-in
    for a pretrained encoder in tests and timings."""

    def __init__(self, widths: Sequence[int] = (64, 128, 256, 512),
                 convs: Sequence[int] = (2, 2, 4, 1), *, pooling: str = "max",
                 impl: str = "xla", rngs: nnx.Rngs):
        if len(widths) != len(convs) or not widths:
            raise ValueError(f"widths {tuple(widths)} and convs {tuple(convs)} must pair up")
        self.pooling = pooling
        names, cin = [], 3
        for b, (width, n) in enumerate(zip(widths, convs, strict=True), start=1):
            for i in range(1, n + 1):
                setattr(self, f"conv{b}_{i}",
                        Conv3x3(cin, width, init_scale=2.0, impl=impl, rngs=rngs))
                names += [f"conv{b}_{i}", f"relu{b}_{i}"]
                cin = width
            names.append(f"pool{b}")
        self.names = tuple(names)

    def __call__(self, images: Array, layers: Sequence[str] | None = None) -> dict[str, Array]:
        layers = self.names if layers is None else tuple(layers)
        unknown = [name for name in layers if name not in self.names]
        if unknown:
            raise UserError(f"unknown layer {unknown[0]!r}; valid names: {', '.join(self.names)}")
        return vgg.run_layers(self, vgg.imagenet_normalise(images), self.names, layers,
                              lambda x: vgg.pool2x2(x, self.pooling))


# ----------------------------------------------------------------------------------------
# The decoder


@dataclasses.dataclass(frozen=True)
class MirrorStep:
    """One decoder step: a conv ``in_ch -> out_ch`` (``relu`` after it) or, with
    ``upsample``, a 2x nearest-neighbour upsampling."""

    upsample: bool = False
    in_ch: int = 0
    out_ch: int = 0
    relu: bool = True


def encoder_layers_to(layer_names: Sequence[str], layer: str) -> tuple[str, ...]:
    """The encoder's layers from the input up to ``layer`` included; UserError if it has no
    such layer."""
    layer_names = tuple(layer_names)
    if layer not in layer_names:
        raise UserError(f"the encoder has no layer {layer!r}; its layers: "
                        f"{', '.join(layer_names)}")
    return layer_names[: layer_names.index(layer) + 1]


def mirror_plan(encoder: nnx.Module, layer_names: Sequence[str], layer: str,
                size: int = 64) -> tuple[MirrorStep, ...]:
    """The decoder steps mirroring ``encoder`` (with weights, or abstract from
    ``nnx.eval_shape``) from its input to ``layer``: the widths of its convolutions and
    where it halves the resolution, read from an abstract call on a ``size`` x ``size``
    image (no computation)."""
    path = encoder_layers_to(layer_names, layer)
    convs = [name for name in path if _CONV.fullmatch(name)]
    if not convs:
        raise UserError(f"the encoder has no convolution up to {layer!r}")
    graphdef, state = nnx.split(encoder)
    x = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    shapes = jax.eval_shape(
        lambda state, images: nnx.merge(graphdef, state)(images, layers=list(path)), state, x)
    steps, channels, side = [], 3, size
    for name in path:
        shape = shapes[name].shape
        if _CONV.fullmatch(name):
            steps.append(MirrorStep(in_ch=int(shape[-1]), out_ch=channels))
            channels = int(shape[-1])
        if shape[1] != side:
            if shape[1] != side // 2:
                raise UserError(f"encoder layer {name!r} changes the resolution from {side} "
                                f"to {shape[1]}; the decoder mirrors halvings only")
            steps.append(MirrorStep(upsample=True))
            side = int(shape[1])
    steps.reverse()
    last = max(i for i, step in enumerate(steps) if not step.upsample)
    steps[last] = dataclasses.replace(steps[last], relu=False)  # to RGB: no ReLU
    return tuple(steps)


def widen(plan: Sequence[MirrorStep], factor: float) -> tuple[MirrorStep, ...]:
    """``plan`` with its hidden widths times ``factor`` (rounded, at least 1): the first
    convolution still reads the encoder's features and the last still writes RGB."""
    if factor == 1:
        return tuple(plan)
    if not factor > 0:
        raise UserError(f"the decoder's width factor must be > 0, got {factor}")
    convs = [i for i, step in enumerate(plan) if not step.upsample]
    first, last = convs[0], convs[-1]
    scale = lambda channels: max(1, round(channels * factor))
    return tuple(step if step.upsample else dataclasses.replace(
        step, in_ch=step.in_ch if i == first else scale(step.in_ch),
        out_ch=step.out_ch if i == last else scale(step.out_ch)) for i, step in enumerate(plan))


def downsampling(plan: Sequence[MirrorStep]) -> int:
    """How much the encoder shrinks an image (2 ** the number of halvings): content images
    whose sides are multiples of it come back at their own size."""
    return 2 ** sum(step.upsample for step in plan)


class PaddedConv3x3(nnx.Module):
    """3x3 convolution, stride 1, with reflection (or zero) padding of 1; ``impl``: 'xla'
    (``conv_general_dilated``) or 'matmul' (nine shifted slices and one GEMM); 'auto'
    chooses as :class:`networks.layers.Conv3x3` does (on CPU the GEMM for small maps only)."""

    def __init__(self, in_ch: int, out_ch: int, *, reflect: bool = True,
                 init_scale: float = 2.0, bias_init: float = 0.0, impl: str = "auto",
                 rngs: nnx.Rngs):
        self.reflect = reflect
        self.impl = resolve_conv_impl(impl)
        self.auto = impl == "auto"
        self.kernel = nnx.Param(default_init(init_scale)(param_key(rngs), (3, 3, in_ch, out_ch)))
        self.bias = nnx.Param(const((out_ch,), bias_init))

    def __call__(self, x: Array) -> Array:
        pad = ((0, 0), (1, 1), (1, 1), (0, 0))
        x = jnp.pad(x, pad, mode="reflect" if self.reflect else "constant")
        kernel = self.kernel[...].astype(x.dtype)
        large = x.shape[1] * x.shape[2] > _AUTO_MATMUL_MAX_PIXELS
        if self.impl == "matmul" and not (self.auto and large):
            _, h, w, c = x.shape
            patches = jnp.concatenate([x[:, dy:dy + h - 2, dx:dx + w - 2]
                                       for dy in range(3) for dx in range(3)], axis=-1)
            y = jnp.dot(patches, kernel.reshape(9 * c, kernel.shape[-1]))
        else:
            y = jax.lax.conv_general_dilated(x, kernel, (1, 1), "VALID", dimension_numbers=_DIMS)
        return y + self.bias[...].astype(y.dtype)


def upsample2(x: Array) -> Array:
    """2x nearest-neighbour upsampling of (N, H, W, C)."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


# The last convolution (to RGB) starts near zero with a mid-grey bias: the first images are
# grey, not values far outside [0, 1] that the encoder then amplifies (losses of 1e4 and a
# decoder that learnt ~40x slower in a 400-step test on style_cnn's relu4_1).
OUTPUT_INIT_SCALE = 1e-4
OUTPUT_BIAS = 0.5


class Decoder(nnx.Module):
    """Features at the AdaIN layer -> an RGB image (in [0, 1] once trained; not clipped),
    the steps of :func:`mirror_plan`. The hidden convolutions have He-scaled weights, the
    output one near-zero weights and a bias of 0.5 (a grey image at initialisation)."""

    def __init__(self, plan: Sequence[MirrorStep], *, reflect: bool = True,
                 impl: str = "auto", rngs: nnx.Rngs):
        self.plan = tuple(plan)
        self.convs = nnx.List([
            PaddedConv3x3(step.in_ch, step.out_ch, reflect=reflect,
                          init_scale=2.0 if step.relu else OUTPUT_INIT_SCALE,
                          bias_init=0.0 if step.relu else OUTPUT_BIAS, impl=impl, rngs=rngs)
            for step in self.plan if not step.upsample])

    def __call__(self, features: Array) -> Array:
        x, convs = jnp.asarray(features, jnp.float32), iter(self.convs)
        for step in self.plan:
            if step.upsample:
                x = upsample2(x)
                continue
            x = next(convs)(x)
            if step.relu:
                x = jax.nn.relu(x)
        return x


# ----------------------------------------------------------------------------------------
# Frozen weights as plain arrays (what a run's checkpoints store)


def used_weights(state: dict, layer_names: Sequence[str], deepest: str) -> dict:
    """The pure-dict weights of an encoder (``nnx.to_pure_dict``) without the layers after
    ``deepest``, which an AdaIN model never computes, as numpy arrays."""
    later = set(tuple(layer_names)[tuple(layer_names).index(deepest) + 1:])
    return {str(key): jax.tree.map(np.asarray, value) for key, value in state.items()
            if str(key) not in later}


def with_weights(abstract: nnx.Module, weights: dict) -> nnx.Module:
    """``abstract`` (an encoder built by ``nnx.eval_shape``) carrying ``weights`` (what
    :func:`used_weights` kept); the layers it dropped get zeros, never computed."""
    graphdef, state = nnx.split(abstract)
    pure = nnx.to_pure_dict(state)

    def fill(node, saved):
        if isinstance(node, dict):
            return {k: fill(v, None if saved is None else saved.get(k)) for k, v in node.items()}
        if saved is None:
            return jnp.zeros(node.shape, node.dtype)
        value = jnp.asarray(saved, node.dtype)
        if value.shape != node.shape:
            raise UserError(f"saved encoder weights of shape {value.shape} where the encoder "
                            f"has {node.shape}: the run used another encoder")
        return value

    nnx.replace_by_pure_dict(state, fill(pure, weights))
    return nnx.merge(graphdef, state)
