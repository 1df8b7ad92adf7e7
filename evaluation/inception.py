"""The FID Inception-v3 as a feature extractor: preprocessing, weights loading, factory.

The weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (TTUR's TF graph of
2015-12-05 ported to torch), given by path: nothing is downloaded. The file is read
without torch. ``torch.save`` writes one of two formats and both are read here:

* zip (torch >= 1.6): ``<prefix>/data.pkl`` is the pickled state_dict, whose tensors refer
  to storages by persistent id ``('storage', StorageType, key, location, numel)``; each
  storage's raw bytes are the record ``<prefix>/data/<key>``, in the byte order named by
  ``<prefix>/byteorder`` (little if absent);
* legacy (torch < 1.6, which is what a 2019 file most likely is): consecutive pickles of
  the magic number, the protocol version 1001, a sys_info dict and the state_dict (ids
  ``('storage', StorageType, root_key, location, numel, view_metadata)``), then a pickle
  of the storage keys, then per key in that order an int64 little-endian element count
  and the little-endian raw data.

Tensors are rebuilt from ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)`` calls. The unpickler resolves only those names, the ``torch.*Storage`` types and
``collections.OrderedDict``; anything else in the file is refused, never called.
An ``.npz`` with the same keys (torch layouts) is accepted too.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from evaluation.extractor import FeatureExtractor
from networks import inception as net

NAME = "inception_v3_fid"
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"  # pytorch-fid's release asset
INPUT_SIZE = net.INPUT_SIZE
RESIZE = "bilinear, no antialias, half-pixel centres (torch align_corners=False)"
NORMALISATION = "x / 255 * 2 - 1"

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL_VERSION = 1001  # torch.serialization.PROTOCOL_VERSION


class WeightsError(ValueError):
    """A weights file that cannot give the network its weights (a one-line message)."""


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
# Reading torch files without torch

_STORAGE_DTYPES = {
    "FloatStorage": "<f4",
    "DoubleStorage": "<f8",
    "HalfStorage": "<f2",
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "i1",
    "ByteStorage": "u1",
    "BoolStorage": "?",
}


# Frozen slotted dataclasses: a pickle's BUILD opcode cannot rewrite their fields.
@dataclasses.dataclass(frozen=True, slots=True)
class _StorageType:
    name: str


@dataclasses.dataclass(frozen=True, slots=True)
class _StorageRef:
    """Elements [offset, offset + numel) of the storage saved under ``key``."""

    key: str
    dtype: str
    offset: int
    numel: int


@dataclasses.dataclass(frozen=True, slots=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, *_rest) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_tensor_v2`` (requires_grad, hooks, metadata
    are irrelevant to weights); the data is attached once the storages are read."""
    size, stride = tuple(size), tuple(stride)
    ok = isinstance(storage, _StorageRef) and _is_int(storage_offset) and len(size) == len(stride)
    if not ok or not all(_is_int(v) and v >= 0 for v in (storage_offset, *size, *stride)):
        raise pickle.UnpicklingError("malformed _rebuild_tensor_v2 arguments")
    return _TensorRef(storage, storage_offset, size, stride)


def _rebuild_parameter(data, *_rest) -> _TensorRef:
    """Stands in for ``torch._utils._rebuild_parameter``: a Parameter is its tensor."""
    if not isinstance(data, _TensorRef):
        raise pickle.UnpicklingError("malformed _rebuild_parameter arguments")
    return data


_GLOBALS = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    # A file saved from GPU tensors names torch.cuda.*Storage; the bytes are the same.
    **{(m, name): _StorageType(name) for m in ("torch", "torch.cuda") for name in _STORAGE_DTYPES},
}


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles a state_dict; refuses every global outside :data:`_GLOBALS`."""

    def __init__(self, file: io.BytesIO, storages: dict[str, tuple[str, int]]):
        super().__init__(file, encoding="utf-8")
        self.storages = storages  # key -> (dtype, numel) of every root storage referenced

    def find_class(self, module: str, name: str) -> Any:
        found = _GLOBALS.get((module, name))
        if found is None:
            raise pickle.UnpicklingError(
                f"refused to unpickle global '{module}.{name}' (only torch tensors, "
                "storages and OrderedDict are allowed)"
            )
        return found

    def persistent_load(self, pid: Any) -> _StorageRef:
        # zip: ('storage', type, key, location, numel); legacy adds view_metadata.
        if not isinstance(pid, tuple) or len(pid) not in (5, 6) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {str(pid)[:80]}")
        storage_type, key, _location, numel = pid[1:5]
        key = key.decode("ascii") if isinstance(key, bytes) else key
        if not isinstance(storage_type, _StorageType) or not isinstance(key, str):
            raise pickle.UnpicklingError(f"malformed storage id {str(pid)[:80]}")
        if not _is_int(numel) or numel < 0:
            raise pickle.UnpicklingError(f"malformed storage size {numel!r}")
        dtype = _STORAGE_DTYPES[storage_type.name]
        if self.storages.setdefault(key, (dtype, numel)) != (dtype, numel):
            raise pickle.UnpicklingError(f"storage {key} saved with two types or sizes")
        view = pid[5] if len(pid) == 6 else None  # legacy: (view_key, offset, numel) or None
        if view is None:
            return _StorageRef(key, dtype, 0, numel)
        if not (isinstance(view, tuple) and len(view) == 3 and all(map(_is_int, view[1:]))):
            raise pickle.UnpicklingError(f"malformed storage view {str(view)[:80]}")
        return _StorageRef(key, dtype, view[1], view[2])


def _materialise(t: _TensorRef, roots: dict[str, np.ndarray]) -> np.ndarray:
    """The tensor's elements, copied out of its storage (bounds checked before striding)."""
    ref = t.storage
    root = roots[ref.key]
    if ref.offset < 0 or ref.offset + ref.numel > root.size:
        raise WeightsError(f"storage view {ref.key} exceeds its storage")
    window = root[ref.offset : ref.offset + ref.numel]
    if math.prod(t.size) == 0:
        return np.zeros(t.size, window.dtype.newbyteorder("="))
    last = t.offset + sum((n - 1) * s for n, s in zip(t.size, t.stride, strict=True))
    if last >= window.size:
        raise WeightsError(f"a tensor of shape {t.size} exceeds its storage {ref.key}")
    strides = tuple(s * window.itemsize for s in t.stride)
    view = np.lib.stride_tricks.as_strided(window[t.offset :], t.size, strides, writeable=False)
    return np.ascontiguousarray(view, dtype=view.dtype.newbyteorder("="))


def _read_storage_bytes(buf: bytes, dtype: str, numel: int, key: str) -> np.ndarray:
    if len(buf) < numel * np.dtype(dtype).itemsize:
        raise WeightsError(f"storage {key} is truncated")
    return np.frombuffer(buf, dtype, count=numel)


def _read_legacy(raw: bytes) -> tuple[Any, dict[str, np.ndarray]]:
    f = io.BytesIO(raw)
    if _SafeUnpickler(f, {}).load() != _MAGIC_NUMBER:
        raise WeightsError("not a torch file (bad magic number)")
    version = _SafeUnpickler(f, {}).load()
    if version != _PROTOCOL_VERSION:
        raise WeightsError(f"unsupported torch legacy protocol version {version!r}")
    _SafeUnpickler(f, {}).load()  # sys_info: torch itself ignores it (data is little-endian)
    storages: dict[str, tuple[str, int]] = {}
    obj = _SafeUnpickler(f, storages).load()
    keys = _SafeUnpickler(f, {}).load()
    if not isinstance(keys, list) or set(keys) != set(storages):
        raise WeightsError("storage key list does not match the tensors")
    roots = {}
    for key in keys:  # in this order: an int64 element count, then the raw data
        dtype, numel = storages[key]
        (count,) = struct.unpack("<q", f.read(8))
        if count != numel:
            raise WeightsError(f"storage {key} holds {count} elements, expected {numel}")
        nbytes = count * np.dtype(dtype).itemsize
        roots[key] = _read_storage_bytes(f.read(nbytes), dtype, count, key)
    return obj, roots


def _read_torch_zip(zf: zipfile.ZipFile, pkl_name: str) -> tuple[Any, dict[str, np.ndarray]]:
    prefix = pkl_name[: -len("data.pkl")]
    order = "<"
    if prefix + "byteorder" in zf.namelist():
        order = {b"little": "<", b"big": ">"}.get(zf.read(prefix + "byteorder"), "?")
        if order == "?":
            raise WeightsError("unknown byteorder record")
    storages: dict[str, tuple[str, int]] = {}
    obj = _SafeUnpickler(io.BytesIO(zf.read(pkl_name)), storages).load()
    roots = {}
    for key, (dtype, numel) in storages.items():
        dtype = np.dtype(dtype).newbyteorder(order).str
        roots[key] = _read_storage_bytes(zf.read(f"{prefix}data/{key}"), dtype, numel, key)
    return obj, roots


def _tensors(obj: Any, roots: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a checkpoint wrapping the state_dict
    if not isinstance(obj, dict):
        raise WeightsError(f"holds a {type(obj).__name__}, not a state_dict")
    out = {}
    for key, value in obj.items():
        if not isinstance(key, str) or not isinstance(value, _TensorRef):
            raise WeightsError(f"state_dict entry {str(key)[:80]!r} is not a tensor")
        out[key] = _materialise(value, roots)
    return out


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor of a state_dict file by key, as saved (torch layouts).

    Reads torch's zip and legacy ``.pth`` formats and ``.npz``; raises :class:`WeightsError`.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"Inception weights file not found: {path}")
    try:
        raw = path.read_bytes()
        if raw.startswith(b"PK\x03\x04"):
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                names = zf.namelist()
                pkl = [n for n in names if n == "data.pkl" or n.endswith("/data.pkl")]
                if len(pkl) == 1:
                    return _tensors(*_read_torch_zip(zf, pkl[0]))
                if pkl or not all(n.endswith(".npy") for n in names):
                    raise WeightsError("a zip that is neither a torch state_dict nor an .npz")
            with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
                return {key: np.asarray(npz[key]) for key in npz.files}
        if raw[:1] == b"\x80":  # a pickle's PROTO opcode: torch's legacy format
            return _tensors(*_read_legacy(raw))
        if raw[257:262] == b"ustar":
            raise WeightsError("torch's oldest (tar) format is not supported; convert to .npz")
        raise WeightsError("unsupported format (not a torch .pth/.pt or an .npz file)")
    except WeightsError as err:
        message = str(err)
    except Exception as err:  # anything a corrupt or hostile file provokes
        message = f"cannot read it ({type(err).__name__}: {err})"
    message = " ".join(message.split())  # one line
    raise WeightsError(f"Inception weights file {path}: {message}") from None


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
