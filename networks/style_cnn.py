"""A small VGG-shaped feature CNN for neural style transfer on a CPU ("style_cnn").

No pretrained ImageNet network can be downloaded here, so style transfer needs a feature
network of its own that works offline: this architecture, trained by the project
(:mod:`style.feature_training`) and pinned in the repository (``style/style_cnn.npz``,
:func:`style.pretrained.load_style_cnn`).

Shaped like VGG (:mod:`networks.vgg`) and named the same way: 3x3 convolutions (bias,
zero padding 1), each followed by a ReLU, and a 2x2 stride-2 average pooling after each
block, so the layers read ``conv1_1, relu1_1, pool1, conv2_1, ..., relu5_1`` and
:class:`style.gatys.GatysOptions`' default layers (the paper's ``conv1_1 .. conv5_1`` and
``conv4_2``) exist here too. It does 43 times fewer multiply-adds than VGG-19's
convolutions (0.59 G against 25.5 G for a 256x256 image) and has 430 thousand parameters
(1.7 MB): narrow layers where the feature maps are large (16 channels at full resolution,
32 at half), one convolution in the first, second and last blocks (:data:`BLOCK_CONVS`,
:data:`BLOCK_WIDTHS`). On two CPU cores a gradient of the Gatys loss of a 256x256 image
takes about 50 ms, an L-BFGS step about 0.1 s (``bench/style_features.py`` measures it).

Images go in as RGB floats in [0, 1], NHWC; the network normalises them itself
(ImageNet's mean and std, as torchvision's VGG). Random weights unless loaded.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
from flax import nnx

from errors import UserError
from networks.layers import Conv3x3
from networks.vgg import imagenet_normalise, run_layers

Array = jax.Array

BLOCK_CONVS = (1, 1, 2, 2, 1)
BLOCK_WIDTHS = (16, 32, 64, 128, 128)
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for b, n in enumerate(BLOCK_CONVS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        if b < len(BLOCK_CONVS):  # nothing reads a pooling after the last block
            names.append(f"pool{b}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
CONV_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))
# The first (rectified) layer of every block for style, as Gatys on VGG-19 (whose Caffe
# ReLUs ran in place, see GatysOptions). Content at relu3_1, not VGG's block-4 layer: this
# network was trained on orderless statistics, and its block 4 (128 channels at an eighth
# of the resolution) keeps too little of the layout; at relu3_1 the cat stays a cat
# (docs/style.md).
DEFAULT_STYLE_LAYERS: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
DEFAULT_CONTENT_LAYERS: tuple[str, ...] = ("relu3_1",)


def conv_shapes() -> dict[str, tuple[int, int]]:
    """conv name -> (input channels, output channels)."""
    shapes, cin = {}, 3
    for name in CONV_NAMES:
        cout = BLOCK_WIDTHS[int(name[4]) - 1]
        shapes[name] = (cin, cout)
        cin = cout
    return shapes


def layer_channels() -> dict[str, int]:
    """layer name -> its number of channels."""
    out, c = {}, 3
    widths = conv_shapes()
    for name in LAYER_NAMES:
        if name.startswith("conv"):
            c = widths[name][1]
        out[name] = c
    return out


def check_layers(layers: Sequence[str] | str) -> tuple[str, ...]:
    """``layers`` as a tuple; a name the network has not raises :class:`UserError`."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if unknown:
        raise UserError(
            f"unknown style_cnn layer {unknown[0]!r}; valid names: {', '.join(LAYER_NAMES)}"
        )
    return layers


def avg_pool(x: Array) -> Array:
    """2x2 average pooling, stride 2."""
    # 2x2 windows, stride 2, no padding (an odd last row/column is dropped, as in VGG).
    window = (1, 2, 2, 1)
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") * 0.25


class StyleCNN(nnx.Module):
    """style_cnn features: RGB [0, 1] (N, H, W, 3) -> a dict of the requested layers'
    activations (:data:`LAYER_NAMES`). ``impl`` picks the convolution implementation
    (:class:`networks.layers.Conv3x3`)."""

    def __init__(self, *, impl: str = "auto", rngs: nnx.Rngs):
        for name, (cin, cout) in conv_shapes().items():
            # He scaling (2 / fan), as networks.vgg: random-weight activations keep their size.
            setattr(self, name, Conv3x3(cin, cout, init_scale=2.0, impl=impl, rngs=rngs))

    @staticmethod
    def preprocess(images: Array) -> Array:
        """RGB [0, 1] -> ``(x - mean) / std`` with ImageNet's RGB mean and std."""
        return imagenet_normalise(images)

    def __call__(self, images: Array, layers: Sequence[str] | None = None) -> dict[str, Array]:
        """The activations of ``layers`` (all of them if None), computing no deeper than
        the deepest one asked for."""
        layers = LAYER_NAMES if layers is None else check_layers(layers)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"style_cnn wants RGB images (N, H, W, 3), got {tuple(images.shape)}")
        return run_layers(self, self.preprocess(images), LAYER_NAMES, layers, avg_pool)
