"""Reading a torch ``state_dict`` file without torch (the FID Inception's and torchvision's
VGG weights' format).

``torch.save`` writes one of two formats and both are read here:

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
import io
import math
import os
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["WeightsError", "read_state_dict"]

_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
_PROTOCOL_VERSION = 1001  # torch.serialization.PROTOCOL_VERSION


class WeightsError(ValueError):
    """A weights file that cannot give the network its weights (a one-line message)."""


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


def read_state_dict(
    path: str | os.PathLike, *, what: str = "Inception weights"
) -> dict[str, np.ndarray]:
    """Every tensor of a state_dict file by key, as saved (torch layouts).

    Reads torch's zip and legacy ``.pth`` formats and ``.npz``; raises :class:`WeightsError`
    with a one-line message that starts ``f"{what} file {path}"`` (``what`` names the
    network the file is meant for).
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{what} file not found: {path}")
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
    raise WeightsError(f"{what} file {path}: {message}") from None
