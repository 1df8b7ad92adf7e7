"""VGG-19's convolutional part (torchvision's ``vgg19().features``) as a feature network.

Sixteen 3x3 convolutions (bias, zero padding 1) each followed by a ReLU, and a 2x2 stride-2
pooling after each of the five blocks; no classifier. Images go in as RGB floats in [0, 1],
NHWC, and the network normalises them itself the way its weights were trained:

* ``origin='torchvision'``: ``(x - mean) / std`` with ImageNet's RGB mean and std;
* ``origin='keras'``: Keras' "caffe" preprocessing, ``255 x`` in BGR order minus the BGR
  mean pixel. The first convolution keeps the file's BGR input channels, so the same RGB
  [0, 1] image means the same to both kinds of weights.

Gatys et al. replace the max pooling by average pooling (``pooling='avg'``, the default
here), which they found gives better-looking gradients; the weights are the same.

Weights come from a user-supplied file, never downloaded (:func:`load_vgg19`):
torchvision's ``vgg19-dcbb9e9d.pth`` (read without torch and without unpickling arbitrary
objects, :mod:`networks.torch_state_dict`), or Keras' ``vgg19_weights_tf_dim_ordering_
tf_kernels[_notop].h5`` (h5py, imported only for such a file).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from errors import UserError
from networks.layers import Conv3x3
from networks.torch_state_dict import WeightsError, read_state_dict

Array = jax.Array

_BLOCK_CONVS = (2, 2, 4, 4, 4)
_BLOCK_WIDTHS = (64, 128, 256, 512, 512)


def _layer_names() -> tuple[str, ...]:
    names: list[str] = []
    for b, n in enumerate(_BLOCK_CONVS, start=1):
        for i in range(1, n + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return tuple(names)


LAYER_NAMES: tuple[str, ...] = _layer_names()
CONV_NAMES: tuple[str, ...] = tuple(n for n in LAYER_NAMES if n.startswith("conv"))
POOLINGS = ("avg", "max")
ORIGINS = ("torchvision", "keras")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # RGB, for [0, 1] pixels
IMAGENET_STD = (0.229, 0.224, 0.225)
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # for [0, 255] pixels
TORCH_SUFFIXES = (".pth", ".pt", ".npz")
KERAS_SUFFIXES = (".h5", ".hdf5")


def _torch_indices() -> dict[str, int]:
    """conv name -> its index in torchvision's ``features`` Sequential, where every ReLU
    and pool takes an index too, exactly as in :data:`LAYER_NAMES` (0, 2, 5, 7, 10, ...)."""
    return {name: i for i, name in enumerate(LAYER_NAMES) if name.startswith("conv")}


TORCH_INDEX: dict[str, int] = _torch_indices()


def conv_shapes() -> dict[str, tuple[int, int]]:
    """conv name -> (input channels, output channels)."""
    shapes, cin = {}, 3
    for name in CONV_NAMES:
        cout = _BLOCK_WIDTHS[int(name[4]) - 1]
        shapes[name] = (cin, cout)
        cin = cout
    return shapes


def check_layers(layers: Sequence[str]) -> tuple[str, ...]:
    """``layers`` as a tuple; a name VGG-19 has not raises :class:`UserError`."""
    layers = (layers,) if isinstance(layers, str) else tuple(layers)
    unknown = [name for name in layers if name not in LAYER_NAMES]
    if unknown:
        raise UserError(
            f"unknown VGG-19 layer {unknown[0]!r}; valid names: {', '.join(LAYER_NAMES)}"
        )
    return layers


def pool2x2(x: Array, kind: str) -> Array:
    """2x2 stride-2 pooling, ``kind`` 'max' or 'avg'."""
    # 2x2 windows, stride 2, no padding: torch's floor mode drops an odd last row/column.
    window = (1, 2, 2, 1)
    if kind == "max":
        return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, window, window, "VALID")
    return jax.lax.reduce_window(x, 0.0, jax.lax.add, window, window, "VALID") * 0.25


class VGG19(nnx.Module):
    """VGG-19 features: RGB [0, 1] (N, H, W, 3) -> a dict of the requested layers'
    activations (:data:`LAYER_NAMES`). Random weights unless loaded (:func:`load_vgg19`);
    ``impl`` picks the convolution implementation (:class:`networks.layers.Conv3x3`)."""

    def __init__(
        self,
        pooling: str = "avg",
        *,
        origin: str = "torchvision",
        impl: str = "auto",
        rngs: nnx.Rngs,
    ):
        if pooling not in POOLINGS:
            raise UserError(f"VGG-19 pooling must be one of {POOLINGS}, got {pooling!r}")
        if origin not in ORIGINS:
            raise UserError(f"VGG-19 origin must be one of {ORIGINS}, got {origin!r}")
        self.pooling = pooling
        self.origin = origin
        for name, (cin, cout) in conv_shapes().items():
            # He scaling (2 / fan) keeps random-weight activations from fading over 16 ReLUs.
            setattr(self, name, Conv3x3(cin, cout, init_scale=2.0, impl=impl, rngs=rngs))

    def preprocess(self, images: Array) -> Array:
        """RGB [0, 1] -> the input the weights of :attr:`origin` were trained on."""
        x = jnp.asarray(images, jnp.float32)
        if self.origin == "keras":
            return x[..., ::-1] * 255.0 - jnp.asarray(CAFFE_MEAN_BGR, jnp.float32)
        return imagenet_normalise(x)

    def __call__(self, images: Array, layers: Sequence[str] | None = None) -> dict[str, Array]:
        """The activations of ``layers`` (all of them if None), computing no deeper than
        the deepest one asked for."""
        layers = LAYER_NAMES if layers is None else check_layers(layers)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise UserError(f"VGG-19 wants RGB images (N, H, W, 3), got {tuple(images.shape)}")
        return run_layers(self, self.preprocess(images), LAYER_NAMES, layers,
                          lambda x: pool2x2(x, self.pooling))


def imagenet_normalise(images: Array) -> Array:
    """RGB [0, 1] -> ``(x - mean) / std`` with ImageNet's RGB mean and std."""
    x = jnp.asarray(images, jnp.float32)
    return (x - jnp.asarray(IMAGENET_MEAN, jnp.float32)) / jnp.asarray(IMAGENET_STD, jnp.float32)


def run_layers(net: nnx.Module, x: Array, layer_names: Sequence[str], layers: Sequence[str],
               pool: Callable[[Array], Array]) -> dict[str, Array]:
    """A VGG-shaped network's walk: ``layer_names`` in order (``conv*`` the attribute of
    ``net`` of that name, ``relu*`` a ReLU, ``pool*`` ``pool``), stopping at the deepest
    of ``layers``; their activations, in the order asked."""
    wanted = set(layers)
    last = max((layer_names.index(name) for name in wanted), default=-1)
    out = {}
    for name in layer_names[: last + 1]:
        if name.startswith("conv"):
            x = getattr(net, name)(x)
        elif name.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            x = pool(x)
        if name in wanted:
            out[name] = x
    return {name: out[name] for name in layers}


# ----------------------------------------------------------------------------------------
# Loading weights


def _fail(path: Path, problem: str) -> UserError:
    return UserError(" ".join(f"VGG-19 weights file {path}: {problem}".split()))


def _float32(path: Path, key: str, value: np.ndarray, want: tuple[int, ...]) -> np.ndarray:
    if tuple(value.shape) != want:
        raise _fail(path, f"{key} has shape {tuple(value.shape)}, expected {want}")
    if not np.issubdtype(value.dtype, np.floating):
        raise _fail(path, f"{key} has dtype {value.dtype}, expected float")
    return np.asarray(value, np.float32)


def read_torchvision_weights(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """conv name -> (HWIO kernel, bias) from torchvision's ``vgg19`` state_dict file
    (``features.<i>.weight`` OIHW and ``.bias``; ``classifier.*`` is ignored)."""
    path = Path(path)
    try:
        state = read_state_dict(path, what="VGG-19 weights")
    except WeightsError as err:
        raise UserError(str(err)) from None
    wanted = [
        f"features.{TORCH_INDEX[c]}.{leaf}" for c in CONV_NAMES for leaf in ("weight", "bias")
    ]
    missing = [key for key in wanted if key not in state]
    if missing:
        counts = f"{len(missing)} of {len(wanted)} missing"
        raise _fail(path, f"missing key {missing[0]!r} ({counts}): not torchvision's vgg19")
    unknown = sorted(k for k in state if k not in wanted and not k.startswith("classifier."))
    if unknown:
        counts = f"{len(unknown)} unknown"
        raise _fail(path, f"unexpected key {unknown[0]!r} ({counts}): not torchvision's vgg19")
    out = {}
    for name, (cin, cout) in conv_shapes().items():
        prefix = f"features.{TORCH_INDEX[name]}"
        kernel = _float32(path, f"{prefix}.weight", state[f"{prefix}.weight"], (cout, cin, 3, 3))
        bias = _float32(path, f"{prefix}.bias", state[f"{prefix}.bias"], (cout,))
        out[name] = (np.ascontiguousarray(kernel.transpose(2, 3, 1, 0)), bias)  # OIHW -> HWIO
    return out


_KERAS_LAYER = re.compile(r"block([1-5])_conv([1-4])")
# Keras 1/2 name a kernel 'kernel:0', 'block1_conv1_W_1:0' or 'block1_conv1_W'; biases alike.
_KERAS_KERNEL = re.compile(r"(?:.*_)?(?:kernel|W)(?:_\d+)?(?::\d+)?")
_KERAS_BIAS = re.compile(r"(?:.*_)?(?:bias|b)(?:_\d+)?(?::\d+)?")


def _keras_leaf(parts: list[str]) -> str | None:
    """'kernel' | 'bias' | None for a dataset at ``parts`` (HDF5 path components)."""
    if len(parts) >= 2 and parts[-2] == "vars":  # Keras 3: layers/<name>/vars/0 and /1
        return {"0": "kernel", "1": "bias"}.get(parts[-1])
    if _KERAS_KERNEL.fullmatch(parts[-1]):
        return "kernel"
    if _KERAS_BIAS.fullmatch(parts[-1]):
        return "bias"
    return None


def _read_h5(path: Path) -> dict[tuple[str, str], tuple[str, np.ndarray]]:
    """(conv name, 'kernel' | 'bias') -> (HDF5 path, array) of every VGG conv dataset,
    wherever it sits: ``model_weights/`` of a saved model, the top level of
    ``save_weights``' files, nested per-layer groups, Keras 3's ``layers/*/vars``."""
    try:
        import h5py
    except ImportError:
        raise _fail(path, "reading Keras .h5 weights needs h5py (pip install h5py)") from None
    found: dict[tuple[str, str], tuple[str, np.ndarray]] = {}

    def visit(name: str, obj: Any) -> None:
        parts = name.split("/")
        # A compiled model's file also holds the optimiser's slots, under their layer names.
        if not isinstance(obj, h5py.Dataset) or parts[0] == "optimizer_weights":
            return
        groups = [m for p in parts[:-1] if (m := _KERAS_LAYER.fullmatch(p))]
        leaf = _keras_leaf(parts)
        if not groups or leaf is None:
            return
        conv = f"conv{groups[-1].group(1)}_{groups[-1].group(2)}"
        if (conv, leaf) in found:
            raise _fail(path, f"two {leaf}s for {conv}: {found[conv, leaf][0]} and {name}")
        found[conv, leaf] = (name, np.asarray(obj[()]))

    try:
        with h5py.File(path, "r") as f:
            f.visititems(visit)
    except UserError:
        raise
    except Exception as err:  # h5py's OSError for a non-HDF5 file, and anything corrupt
        raise _fail(path, f"cannot read it as HDF5 ({type(err).__name__}: {err})") from None
    return found


def read_keras_weights(path: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """conv name -> (HWIO kernel, bias) from Keras' VGG19 ``.h5`` (with or without top).
    conv1_1's input channels stay in the file's BGR order (see :meth:`VGG19.preprocess`)."""
    path = Path(path)
    found = _read_h5(path)
    wanted = [(c, leaf) for c in CONV_NAMES for leaf in ("kernel", "bias")]
    missing = [key for key in wanted if key not in found]
    if missing:
        conv, leaf = missing[0]
        counts = f"{len(missing)} of {len(wanted)} datasets missing"
        layer = f"block{conv[4]}_conv{conv[6]}"
        raise _fail(path, f"no {leaf} for layer {layer} ({counts}): not Keras' VGG19 weights")
    out = {}
    for name, (cin, cout) in conv_shapes().items():
        (kpath, kernel), (bpath, bias) = found[name, "kernel"], found[name, "bias"]
        kernel = _float32(path, kpath, kernel, (3, 3, cin, cout))
        out[name] = (kernel, _float32(path, bpath, bias, (cout,)))
    return out


def from_weights(
    weights: dict[str, tuple[np.ndarray, np.ndarray]],
    pooling: str = "avg",
    *,
    origin: str = "torchvision",
    impl: str = "auto",
) -> VGG19:
    """A :class:`VGG19` carrying ``weights`` (conv name -> (HWIO kernel, bias))."""
    # Abstract construction: no random numbers are drawn for weights about to be replaced.
    model = nnx.eval_shape(lambda: VGG19(pooling, origin=origin, impl=impl, rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    flat = []
    for path, var in nnx.to_flat_state(state):
        conv, leaf = str(path[0]), str(path[-1])
        value = weights[conv][0 if leaf == "kernel" else 1]
        flat.append((path, type(var)(jnp.asarray(value, jnp.float32))))
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def load_vgg19(path: str | os.PathLike, pooling: str = "avg", *, impl: str = "auto") -> VGG19:
    """VGG-19 with the weights of ``path``: torchvision's ``.pth``/``.pt`` (or an ``.npz``
    with its keys) or Keras' ``.h5``/``.hdf5``; the origin sets the preprocessing. Any
    problem with the file raises a one-line :class:`UserError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"VGG-19 weights file not found: {path}")
    suffix = path.suffix.lower()
    if suffix in TORCH_SUFFIXES:
        return from_weights(read_torchvision_weights(path), pooling, impl=impl)
    if suffix in KERAS_SUFFIXES:
        return from_weights(read_keras_weights(path), pooling, origin="keras", impl=impl)
    expected = f"torchvision's {'/'.join(TORCH_SUFFIXES)} or Keras' {'/'.join(KERAS_SUFFIXES)}"
    raise _fail(path, f"unsupported extension {suffix or '(none)'!r}; expected {expected}")
