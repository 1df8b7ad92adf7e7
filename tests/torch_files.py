"""Torch's weights formats written without torch, for the Inception loader's tests.

Tiny stand-in ``torch`` / ``torch._utils`` modules exist only while a file is written, so
that pickle emits the same GLOBAL opcodes torch does; they are gone before anything is
loaded.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class Storage:
    """A storage to save: a flat array under a key."""

    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class Tensor:
    """Reduces like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    rebuild = None  # the stand-in torch._utils._rebuild_tensor_v2, set while writing

    def __init__(self, storage: Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        hooks = collections.OrderedDict()
        args = (self.storage, self.offset, self.size, self.stride, False, hooks)
        return (Tensor.rebuild, args)

    def value(self) -> np.ndarray:
        a = self.storage.data
        strides = [s * a.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(a[self.offset :], self.size, strides).copy()


def contiguous(arrays: dict[str, np.ndarray]) -> dict[str, Tensor]:
    """One storage per array, C-contiguous strides in elements."""
    out = {}
    for i, (key, a) in enumerate(arrays.items()):
        stride = tuple(s // a.itemsize for s in np.array(a, order="C").strides)
        out[key] = Tensor(Storage(str(i), a), 0, tuple(a.shape), stride)
    return out


class _FakeTorch:
    """Installs stand-in torch modules for the duration of a ``with`` (pickling only)."""

    def __enter__(self):
        torch = types.ModuleType("torch")
        utils = types.ModuleType("torch._utils")

        def _rebuild_tensor_v2(*args):
            raise AssertionError("the writer's stand-in is never called")

        _rebuild_tensor_v2.__module__ = "torch._utils"
        _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
        utils._rebuild_tensor_v2 = _rebuild_tensor_v2
        torch._utils = utils
        self.types = {}
        for name in STORAGE_NAMES.values():
            self.types[name] = type(name, (), {"__module__": "torch", "__qualname__": name})
            setattr(torch, name, self.types[name])
        self.patch = pytest.MonkeyPatch()
        self.patch.setitem(sys.modules, "torch", torch)
        self.patch.setitem(sys.modules, "torch._utils", utils)
        Tensor.rebuild = _rebuild_tensor_v2
        return self

    def __exit__(self, *exc):
        self.patch.undo()
        Tensor.rebuild = None

    def pickler(self, f, legacy: bool) -> pickle.Pickler:
        types_ = self.types

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, Storage):
                    return None
                stype = types_[STORAGE_NAMES[obj.data.dtype]]
                pid = ("storage", stype, obj.key, "cpu", obj.data.size)
                return (*pid, None) if legacy else pid

        return Pickler(f, protocol=2)


def _state_dict(tensors: dict[str, object]) -> collections.OrderedDict:
    sd = collections.OrderedDict(tensors)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict()
    return sd


def _storages(tensors: dict[str, object]) -> dict[str, Storage]:
    return {t.storage.key: t.storage for t in tensors.values() if isinstance(t, Tensor)}


def write_legacy(path, tensors: dict[str, object]) -> None:
    """torch < 1.6's format (torch.serialization._legacy_save)."""
    f = io.BytesIO()
    sys_info = {"protocol_version": 1001, "little_endian": True,
                "type_sizes": {"short": 2, "int": 4, "long": 8}}  # fmt: skip
    with _FakeTorch() as fake:
        for obj in (MAGIC_NUMBER, 1001, sys_info):
            pickle.dump(obj, f, protocol=2)
        fake.pickler(f, legacy=True).dump(_state_dict(tensors))
    storages = _storages(tensors)
    keys = sorted(storages)
    pickle.dump(keys, f, protocol=2)
    for key in keys:
        data = storages[key].data
        f.write(struct.pack("<q", data.size))
        f.write(data.astype(data.dtype.newbyteorder("<")).tobytes())
    path.write_bytes(f.getvalue())


def write_zip(path, tensors: dict[str, object], byteorder: str = "little") -> None:
    """torch >= 1.6's format (torch.serialization._save), under the prefix 'archive/'."""
    f = io.BytesIO()
    with _FakeTorch() as fake:
        fake.pickler(f, legacy=False).dump(_state_dict(tensors))
    order = "<" if byteorder == "little" else ">"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", f.getvalue())
        zf.writestr("archive/byteorder", byteorder)
        for key, storage in _storages(tensors).items():
            data = storage.data.astype(storage.data.dtype.newbyteorder(order))
            zf.writestr(f"archive/data/{key}", data.tobytes())
        zf.writestr("archive/version", "3\n")
