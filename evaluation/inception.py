"""The FID Inception-v3 as a feature extractor: preprocessing, weights loading, factory.

The weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (TTUR's TF graph of
2015-12-05 ported to torch), given by path: nothing is downloaded. The file is read
without torch by :mod:`networks.torch_state_dict` (torch's zip and legacy formats; an
``.npz`` with the same keys, torch layouts, is accepted too); here its tensors are checked
against the network's and put into ``FIDInceptionV3``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation.extractor import FeatureExtractor
from networks import inception as net
from networks.torch_state_dict import WeightsError, read_state_dict

NAME = "inception_v3_fid"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's release asset
INPUT_SIZE = net.INPUT_SIZE
RESIZE = "bilinear, no antialias, half-pixel centres (torch align_corners=False)"
NORMALISATION = "x / 255 * 2 - 1"


# ----------------------------------------------------------------------------------------
# Preprocessing


def _interpolation_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of torch's linear interpolation with align_corners=False.

    Output i samples the input at (i + 0.5) * n_in / n_out - 0.5 (half-pixel centres),
    clamped below at 0; the right neighbour index is clamped to n_in - 1. No antialiasing:
    downscaling also reads only the two nearest samples. Float32 arithmetic, as torch's
    kernel does for float32 input.
    """
    scale = np.float32(n_in) / np.float32(n_out)
    src = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = src - i0.astype(np.float32)
    matrix = np.zeros((n_out, n_in), np.float32)
    rows = np.arange(n_out)
    np.add.at(matrix, (rows, i0), np.float32(1.0) - w1)
    np.add.at(matrix, (rows, i1), w1)
    return matrix


def resize_bilinear(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of float (N, H, W, C) = torch ``F.interpolate(mode='bilinear',
    align_corners=False)``; separable, so two small matrix products (exact weights)."""
    _, h, w, _ = x.shape
    if (h, w) == (height, width):
        return x  # the interpolation matrices would be identities
    hp = jax.lax.Precision.HIGHEST
    x = jnp.einsum("oh,nhwc->nowc", _interpolation_matrix(h, height), x, precision=hp)
    return jnp.einsum("pw,nowc->nopc", _interpolation_matrix(w, width), x, precision=hp)


def preprocess(images: np.ndarray | jax.Array, size: int = INPUT_SIZE) -> jax.Array:
    """uint8 (N, H, W, C), C = 1 or 3 -> float32 (N, size, size, 3) in [-1, 1].

    As pytorch-fid: scale to [0, 1], resize (:data:`RESIZE`), then ``2 x - 1``. Grayscale
    is repeated on the three channels.
    """
    if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.dtype != np.uint8:
        raise ValueError(
            f"preprocess wants uint8 images (N, H, W, 1 or 3), got {images.dtype} "
            f"{tuple(images.shape)}"
        )
    x = resize_bilinear(jnp.asarray(images, jnp.float32) / 255.0, size, size)
    if x.shape[-1] == 1:
        x = jnp.repeat(x, 3, axis=-1)
    return x * 2.0 - 1.0


# ----------------------------------------------------------------------------------------
# The network with its weights


@dataclasses.dataclass(frozen=True)
class _Skeleton:
    """FIDInceptionV3 without numbers: its graph, variable paths and types, torch shapes."""

    graphdef: Any
    leaves: tuple[tuple[tuple[Any, ...], type], ...]
    torch_shapes: dict[str, tuple[int, ...]]


@functools.cache
def _skeleton() -> _Skeleton:
    # Abstract construction (no random numbers computed) takes ~1.5 s: done once a process.
    model = nnx.eval_shape(lambda: net.FIDInceptionV3(rngs=nnx.Rngs(0)))
    graphdef, state = nnx.split(model)
    leaves = tuple((tuple(path), type(var)) for path, var in nnx.to_flat_state(state))
    return _Skeleton(graphdef, leaves, net.torch_state_dict_shapes(model))


def expected_shapes() -> dict[str, tuple[int, ...]]:
    """The state_dict keys FIDInceptionV3 needs, with their torch shapes (472 keys)."""
    return dict(_skeleton().torch_shapes)


def _ignorable(key: str) -> bool:
    """Keys pytorch-fid's file may carry that the FID network has no use for."""
    return key.endswith(".num_batches_tracked") or key.startswith("AuxLogits.")


def load_inception_params(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The FID Inception state_dict from ``path``: exactly the needed keys, torch layouts,
    float32. Unused keys (``num_batches_tracked``, ``AuxLogits.*``) are dropped; any other
    unknown key, a wrong shape or a missing key raises :class:`WeightsError`."""
    state = read_state_dict(path)
    expected = expected_shapes()
    where = f"Inception weights file {path}"
    unknown = sorted(k for k in state if k not in expected and not _ignorable(k))
    if unknown:
        raise WeightsError(f"{where}: unexpected key {unknown[0]!r} ({len(unknown)} unknown)")
    for key, shape in expected.items():
        if key in state and state[key].shape != shape:
            raise WeightsError(
                f"{where}: {key} has shape {tuple(state[key].shape)}, expected {shape}"
            )
    missing = [k for k in expected if k not in state]
    if missing:
        raise WeightsError(
            f"{where}: missing key {missing[0]!r} ({len(missing)} of {len(expected)} missing)"
        )
    params = {}
    for key in expected:
        if not np.issubdtype(state[key].dtype, np.floating):
            raise WeightsError(f"{where}: {key} has dtype {state[key].dtype}, expected float")
        params[key] = state[key].astype(np.float32)
    return params


def build_inception(path: str | os.PathLike) -> net.FIDInceptionV3:
    """``FIDInceptionV3`` carrying the weights of the file at ``path`` (see module doc)."""
    params = load_inception_params(path)
    skeleton = _skeleton()
    flat = []
    for key_path, var_type in skeleton.leaves:
        value = net.from_torch_layout(key_path, params[net.torch_key(key_path)])
        flat.append((key_path, var_type(jnp.asarray(value))))
    return nnx.merge(skeleton.graphdef, nnx.from_flat_state(flat))


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex digest of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def make_inception_extractor(
    weights_path: str | os.PathLike, *, batch_size: int = 50
) -> FeatureExtractor:
    """The FID feature space: pool3 features (2048) and 1008-way logits of uint8 images."""
    path = Path(weights_path)
    graphdef, state = nnx.split(build_inception(path))

    @jax.jit
    def apply(state, images):
        out = nnx.merge(graphdef, state)(preprocess(images))
        return out["pool"], out["logits"]

    def apply_batch(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        features, logits = apply(state, images)
        return np.asarray(features), np.asarray(logits)

    return FeatureExtractor(
        name=NAME,
        checksum=file_sha256(path),
        feature_dim=net.FEATURE_DIM,
        num_classes=net.NUM_CLASSES,
        settings={
            "file": path.name,
            "input_size": INPUT_SIZE,
            "resize": RESIZE,
            "normalisation": NORMALISATION,
            "grayscale": "repeated on R, G, B",
            "features": "pool3: global average pool after Mixed_7c (2048)",
            "logits": "fc 2048 -> 1008 on pool3",
        },
        apply_batch=apply_batch,
        batch_size=batch_size,
    )
