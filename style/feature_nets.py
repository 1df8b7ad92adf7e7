"""The feature networks style transfer can read, by name.

``style_cnn`` is the offline default: a small VGG-shaped CNN that the project trains on
the photos that ship with scikit-image and scikit-learn, pinned in the repository
(:mod:`style.pretrained`). ``vgg19`` is the standard of the literature, built from a
weights file the user gives (torchvision's ``.pth`` or Keras' ``.h5``, read without torch
or TensorFlow; :func:`networks.vgg.load_vgg19`): nothing is ever downloaded.

Each entry says which layers its network has and which it uses by default, so a caller
(``stylize.py``, the AdaIN family, a notebook) asks for ``get("vgg19", weights=path)`` and
never branches on the name.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
from flax import nnx

from errors import RequestError
from networks import style_cnn, vgg

Array = jax.Array
FeatureFn = Callable[[Array, Sequence[str]], Mapping[str, Array]]

# The paper's layers (Gatys et al. 2016): the first layer of every block for style, the
# second of the fourth block for content.
PAPER_STYLE_LAYERS = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
PAPER_CONTENT_LAYERS = ("conv4_2",)
VGG19_FILES = ("torchvision's vgg19-dcbb9e9d.pth or Keras' "
               "vgg19_weights_tf_dim_ordering_tf_kernels_notop.h5")


@dataclasses.dataclass(frozen=True)
class FeatureNetwork:
    """A named feature network: its layers, its default content and style layers, and
    whether it needs a weights file. ``load(weights)`` builds the network with its weights,
    a callable nnx module ``net(images, layers) -> {layer: activations}`` (images RGB in
    [0, 1], NHWC); ``abstract(weights)`` builds the same architecture without reading or
    drawing a weight (``nnx.eval_shape``), for a trained run's saved copy to fill."""

    name: str
    layer_names: tuple[str, ...]
    content_layers: tuple[str, ...]
    style_layers: tuple[str, ...]
    needs_weights: bool
    load: Callable[[str | None], nnx.Module]
    abstract: Callable[[str | None], nnx.Module]
    about: str
    style_weight: float = 1e3  # the style loss's weight that suits its activations

    def check_layers(self, layers: Sequence[str]) -> None:
        """A RequestError naming the first of ``layers`` this network lacks, and its layers."""
        for layer in layers:
            if layer not in self.layer_names:
                raise RequestError(f"{self.name} has no layer {layer!r}; its layers: "
                                   f"{', '.join(self.layer_names)}")


def _load_style_cnn(weights: str | None) -> FeatureFn:
    from style import pretrained  # the pinned file is read (and its digest checked) here

    # The pinned file is checked against its digest; a file of the user's (another
    # training of the recipe) only against the architecture.
    return pretrained.load_style_cnn() if weights is None else pretrained.read_weights(weights)[0]


def _load_vgg19(weights: str | None) -> FeatureFn:
    return vgg.load_vgg19(weights)


def _abstract_style_cnn(weights: str | None) -> nnx.Module:
    return nnx.eval_shape(lambda: style_cnn.StyleCNN(rngs=nnx.Rngs(0)))


def _abstract_vgg19(weights: str | None) -> nnx.Module:
    # The file's kind sets the preprocessing; its name says it, the file need not be there.
    # Max pooling, the AdaIN paper's (the weights are the same for either pooling).
    origin = "keras" if Path(weights or "").suffix.lower() in vgg.KERAS_SUFFIXES else "torchvision"
    return nnx.eval_shape(lambda: vgg.VGG19("max", origin=origin, rngs=nnx.Rngs(0)))


NETWORKS: dict[str, FeatureNetwork] = {
    "style_cnn": FeatureNetwork(
        "style_cnn", style_cnn.LAYER_NAMES, style_cnn.DEFAULT_CONTENT_LAYERS,
        style_cnn.DEFAULT_STYLE_LAYERS, needs_weights=False, load=_load_style_cnn,
        abstract=_abstract_style_cnn,
        about="the project's offline feature CNN (pinned: style/style_cnn.npz)",
        style_weight=10.0),
    "vgg19": FeatureNetwork(
        "vgg19", vgg.LAYER_NAMES, PAPER_CONTENT_LAYERS, PAPER_STYLE_LAYERS,
        needs_weights=True, load=_load_vgg19, abstract=_abstract_vgg19,
        about=f"VGG-19 from your weights file ({VGG19_FILES})"),
}
DEFAULT = "style_cnn"


def register(network: FeatureNetwork) -> None:
    """Adds (or replaces) ``network`` under its name: a notebook's or a test's encoder."""
    NETWORKS[network.name] = network


def get(name: str) -> FeatureNetwork:
    """The entry of ``name``; a RequestError naming the known ones otherwise."""
    if name not in NETWORKS:
        raise RequestError(f"unknown feature network {name!r}; known: {', '.join(NETWORKS)}")
    return NETWORKS[name]


def load(name: str, weights: str | None = None) -> tuple[FeatureNetwork, FeatureFn]:
    """``name``'s entry and its network, read from ``weights`` (required by vgg19; for
    style_cnn, another file written by :mod:`style.feature_training`, else the pinned
    one). One-line UserErrors for a missing file or one of another network; a
    RequestError when vgg19 is asked for without a file."""
    entry = get(name)
    if entry.needs_weights and not weights:
        raise RequestError(f"{name} needs a weights file (--weights FILE: {VGG19_FILES}); "
                        "nothing is downloaded. Or use the offline default, "
                        f"--features {DEFAULT}")
    return entry, entry.load(weights or None)
