"""The offline default feature network of style transfer: style_cnn's pinned weights.

:mod:`style.feature_training` trains :class:`networks.style_cnn.StyleCNN` with a fixed,
seeded recipe; its result is kept in the repository as ``style/style_cnn.npz`` and checked
against :data:`PINNED_SHA256` at every load, as the digits feature network
(``evaluation/digits_cnn.npz``) is: float rounding differs between CPU models, so a
rebuild elsewhere gives other weights, and every style transfer "with the default
network" should use the same ones.

    from networks.style_cnn import DEFAULT_CONTENT_LAYERS, DEFAULT_STYLE_LAYERS, LAYER_NAMES
    from style import GatysOptions, load_image, style_transfer
    from style.pretrained import load_style_cnn

    net = load_style_cnn()
    options = GatysOptions(content_layers=DEFAULT_CONTENT_LAYERS,
                           style_layers=DEFAULT_STYLE_LAYERS)
    result = style_transfer(content, style, lambda x: net(x, options.layers),
                            LAYER_NAMES, options)

The file holds one float32 array per parameter (``conv1_1/kernel`` HWIO, ``conv1_1/bias``)
and a few extras (:data:`EXTRAS`): the recipe as JSON and the training accuracy.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np
from flax import nnx

from errors import UserError
from networks.style_cnn import StyleCNN

PINNED_FILE = Path(__file__).with_name("style_cnn.npz")
# Built by `python -m style.feature_training --out style/style_cnn.npz` (the default
# Recipe; crop accuracy 0.745 over 64 classes), bit for bit the same on two rebuilds here.
PINNED_SHA256 = "b5206b4ae9ea220633ef4eb67ea69f8bd17382173a41893277ce012eabaf3a8a"
RESTORE = "git checkout -- style/style_cnn.npz"
EXTRAS = ("recipe", "train_accuracy")


def sha256(path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def flat_params(model: StyleCNN) -> dict[str, np.ndarray]:
    """Parameters by '/'-joined path, e.g. 'conv1_1/kernel'."""
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {"/".join(map(str, path)): np.asarray(var[...], np.float32) for path, var in flat}


def write_weights(
    path: str | os.PathLike, model: StyleCNN, recipe: Mapping[str, Any], train_accuracy: float
) -> str:
    """Writes ``model``'s parameters and the extras to ``path`` as an .npz whose bytes
    depend only on the arrays (fixed zip timestamps, sorted keys), atomically; returns
    the file's sha256."""
    path = Path(path)
    arrays = dict(flat_params(model))
    arrays["recipe"] = np.asarray(json.dumps(dict(recipe), sort_keys=True))
    arrays["train_accuracy"] = np.float64(train_accuracy)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_STORED) as zf:
            for key in sorted(arrays):
                buffer = io.BytesIO()
                np.lib.format.write_array(buffer, np.asarray(arrays[key]), allow_pickle=False)
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                zf.writestr(info, buffer.getvalue())
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would follow the file into wheels
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return sha256(path)


def _fail(path: Path, problem: str) -> UserError:
    return UserError(" ".join(f"style_cnn weights file {path}: {problem}".split()))


def read_weights(path: str | os.PathLike) -> tuple[StyleCNN, dict[str, Any]]:
    """Any style_cnn weights file (no pin check): the network and its extras
    (``recipe``: dict, ``train_accuracy``: float). A missing, unreadable or ill-fitting
    file raises a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"style_cnn weights file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as stored:
            arrays = {key: stored[key] for key in stored.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise _fail(path, f"cannot read it as .npz ({type(err).__name__}: {err})") from None
    # Abstract construction: no random numbers are drawn for weights about to be replaced.
    model = nnx.eval_shape(lambda: StyleCNN(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    flat = []
    for key_path, var in nnx.to_flat_state(state):
        key = "/".join(map(str, key_path))
        if key not in arrays:
            raise _fail(path, f"no array {key!r}: not a style_cnn weights file")
        value = arrays[key]
        if tuple(value.shape) != tuple(var.shape) or value.dtype != np.float32:
            raise _fail(path, f"{key} is {value.dtype} {value.shape}, expected float32 "
                        f"{tuple(var.shape)}")
        flat.append((key_path, type(var)(jnp.asarray(value))))
    expected = {"/".join(map(str, p)) for p, _ in flat} | set(EXTRAS)
    if set(arrays) != expected:
        raise _fail(path, f"unexpected arrays {sorted(set(arrays) ^ expected)}")
    extras = {"recipe": json.loads(str(arrays["recipe"])),
              "train_accuracy": float(arrays["train_accuracy"])}
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), extras


def load_style_cnn(path: str | os.PathLike = PINNED_FILE) -> StyleCNN:
    """The pinned style_cnn (``path``: a copy of the pinned file); a missing file or one
    whose sha256 is not :data:`PINNED_SHA256` raises a one-line :class:`UserError`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"the style feature network {path} is missing: restore it from the "
                        f"repository ({RESTORE})")
    digest = sha256(path)
    if digest != PINNED_SHA256:
        raise UserError(f"the style feature network {path} has sha256 {digest[:12]}, not the "
                        f"pinned {PINNED_SHA256[:12]}: restore it from the repository "
                        f"({RESTORE})")
    return read_weights(path)[0]
