"""Tests for the FID Inception-v3: architecture, torch-free weights loading, preprocessing.

The weights files are written here, in torch's own formats, without torch: tiny stand-in
``torch`` / ``torch._utils`` modules exist only while a file is written, so that pickle
emits the same GLOBAL opcodes torch does; they are gone before anything is loaded.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
import sys
import types
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import networks
from evaluation import inception as ev
from networks import inception as net

# ----------------------------------------------------------------------------------------
# The architecture, written out independently from torchvision's Inception3 blocks.


def _expected_convs() -> dict[str, tuple[int, int, int, int]]:
    """BasicConv2d name -> (out, in, kh, kw) of pytorch-fid's FIDInceptionV3."""
    convs = {
        "Conv2d_1a_3x3": (32, 3, 3, 3),
        "Conv2d_2a_3x3": (32, 32, 3, 3),
        "Conv2d_2b_3x3": (64, 32, 3, 3),
        "Conv2d_3b_1x1": (80, 64, 1, 1),
        "Conv2d_4a_3x3": (192, 80, 3, 3),
    }
    for name, cin, pool in (("Mixed_5b", 192, 32), ("Mixed_5c", 256, 64), ("Mixed_5d", 288, 64)):
        convs |= {
            f"{name}.branch1x1": (64, cin, 1, 1),
            f"{name}.branch5x5_1": (48, cin, 1, 1),
            f"{name}.branch5x5_2": (64, 48, 5, 5),
            f"{name}.branch3x3dbl_1": (64, cin, 1, 1),
            f"{name}.branch3x3dbl_2": (96, 64, 3, 3),
            f"{name}.branch3x3dbl_3": (96, 96, 3, 3),
            f"{name}.branch_pool": (pool, cin, 1, 1),
        }
    convs |= {
        "Mixed_6a.branch3x3": (384, 288, 3, 3),
        "Mixed_6a.branch3x3dbl_1": (64, 288, 1, 1),
        "Mixed_6a.branch3x3dbl_2": (96, 64, 3, 3),
        "Mixed_6a.branch3x3dbl_3": (96, 96, 3, 3),
    }
    for name, c7 in (("Mixed_6b", 128), ("Mixed_6c", 160), ("Mixed_6d", 160), ("Mixed_6e", 192)):
        convs |= {
            f"{name}.branch1x1": (192, 768, 1, 1),
            f"{name}.branch7x7_1": (c7, 768, 1, 1),
            f"{name}.branch7x7_2": (c7, c7, 1, 7),
            f"{name}.branch7x7_3": (192, c7, 7, 1),
            f"{name}.branch7x7dbl_1": (c7, 768, 1, 1),
            f"{name}.branch7x7dbl_2": (c7, c7, 7, 1),
            f"{name}.branch7x7dbl_3": (c7, c7, 1, 7),
            f"{name}.branch7x7dbl_4": (c7, c7, 7, 1),
            f"{name}.branch7x7dbl_5": (192, c7, 1, 7),
            f"{name}.branch_pool": (192, 768, 1, 1),
        }
    convs |= {
        "Mixed_7a.branch3x3_1": (192, 768, 1, 1),
        "Mixed_7a.branch3x3_2": (320, 192, 3, 3),
        "Mixed_7a.branch7x7x3_1": (192, 768, 1, 1),
        "Mixed_7a.branch7x7x3_2": (192, 192, 1, 7),
        "Mixed_7a.branch7x7x3_3": (192, 192, 7, 1),
        "Mixed_7a.branch7x7x3_4": (192, 192, 3, 3),
    }
    for name, cin in (("Mixed_7b", 1280), ("Mixed_7c", 2048)):
        convs |= {
            f"{name}.branch1x1": (320, cin, 1, 1),
            f"{name}.branch3x3_1": (384, cin, 1, 1),
            f"{name}.branch3x3_2a": (384, 384, 1, 3),
            f"{name}.branch3x3_2b": (384, 384, 3, 1),
            f"{name}.branch3x3dbl_1": (448, cin, 1, 1),
            f"{name}.branch3x3dbl_2": (384, 448, 3, 3),
            f"{name}.branch3x3dbl_3a": (384, 384, 1, 3),
            f"{name}.branch3x3dbl_3b": (384, 384, 3, 1),
            f"{name}.branch_pool": (192, cin, 1, 1),
        }
    return convs


def _expected_state_dict() -> dict[str, tuple[int, ...]]:
    shapes = {}
    for name, shape in _expected_convs().items():
        shapes[f"{name}.conv.weight"] = shape
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{name}.bn.{leaf}"] = (shape[0],)
    return shapes | {"fc.weight": (1008, 2048), "fc.bias": (1008,)}


# torchvision's inception_v3 has 27,161,264 parameters; without AuxLogits (3,326,696) and
# with a 1008-way fc (8 more rows: 16,392) that leaves the FID network's count.
TORCH_PARAMETERS = 27_161_264 - 3_326_696 + 8 * 2049


@pytest.fixture(scope="module")
def abstract_model():
    return nnx.eval_shape(lambda: net.FIDInceptionV3(rngs=nnx.Rngs(0)))


def test_output_shapes_at_299(abstract_model):
    x = jax.ShapeDtypeStruct((3, 299, 299, 3), jnp.float32)
    out = nnx.eval_shape(lambda m, x: m(x), abstract_model, x)
    assert out["pool"].shape == (3, 2048) and out["logits"].shape == (3, 1008)
    assert out["pool"].dtype == jnp.float32


def test_state_dict_keys_shapes_and_parameter_count(abstract_model):
    expected = _expected_state_dict()
    got = net.torch_state_dict_shapes(abstract_model)
    assert len(got) == len(expected) == 94 * 5 + 2
    assert got == expected
    assert got["Mixed_7c.branch_pool.conv.weight"] == (192, 2048, 1, 1)
    assert got["Mixed_6b.branch7x7_2.conv.weight"] == (128, 128, 1, 7)
    assert ev.expected_shapes() == expected
    # Torch parameters: conv weights, bn weight/bias, fc; running stats are buffers.
    n_params = sum(
        np.prod(v) for k, v in expected.items() if not k.endswith(("running_mean", "running_var"))
    )
    assert n_params == TORCH_PARAMETERS == 23_850_960
    assert networks.param_count(abstract_model) == TORCH_PARAMETERS
    stats = nnx.state(abstract_model, nnx.BatchStat)
    n_stats = sum(v.size for v in jax.tree.leaves(stats))
    assert n_stats == sum(np.prod(v) for k, v in expected.items() if "running_" in k)
    assert abstract_model.Mixed_7b.pool == "avg" and abstract_model.Mixed_7c.pool == "max"


# ----------------------------------------------------------------------------------------
# Building blocks against numpy references with torch's semantics (NCHW, OIHW)


def _torch_conv_bn_relu(x, w, bn, stride, padding, eps=1e-3):
    """float64 reference: cross-correlation NCHW/OIHW, inference batch norm, ReLU."""
    (ph, pw), (o, _, kh, kw) = padding, w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    ho = (xp.shape[2] - kh) // stride + 1
    wo = (xp.shape[3] - kw) // stride + 1
    y = np.zeros((x.shape[0], o, ho, wo))
    for dy in range(kh):
        for dx in range(kw):
            rows = slice(dy, dy + stride * (ho - 1) + 1, stride)
            cols = slice(dx, dx + stride * (wo - 1) + 1, stride)
            patch = xp[:, :, rows, cols]
            y += np.einsum("nihw,oi->nohw", patch, w[:, :, dy, dx])
    c = (slice(None), None, None)
    y = (y - bn["running_mean"][c]) / np.sqrt(bn["running_var"][c] + eps)
    return np.maximum(y * bn["weight"][c] + bn["bias"][c], 0.0)


@pytest.mark.parametrize(
    "kernel, stride, padding",
    [
        ((3, 3), 2, (0, 0)),  # Conv2d_1a_3x3
        ((1, 7), 1, (0, 3)),  # branch7x7_2
        ((3, 1), 1, (1, 0)),  # branch3x3_2b
        ((1, 1), 1, (0, 0)),  # the matmul path
        ((5, 5), 1, (2, 2)),  # branch5x5_2
    ],
)
def test_basic_conv2d_matches_torch_semantics(kernel, stride, padding):
    rng = np.random.default_rng(0)
    cin, cout = 3, 5
    block = net.BasicConv2d(cin, cout, kernel, stride=stride, padding=padding, rngs=nnx.Rngs(0))
    w = rng.normal(size=(cout, cin, *kernel))
    bn = {
        "weight": rng.uniform(0.5, 1.5, cout),
        "bias": rng.normal(size=cout),
        "running_mean": rng.normal(size=cout),
        "running_var": rng.uniform(0.5, 2.0, cout),
    }
    block.conv.kernel[...] = jnp.asarray(net.from_torch_layout(("kernel",), w), jnp.float32)
    block.bn.scale[...] = jnp.asarray(bn["weight"], jnp.float32)
    block.bn.bias[...] = jnp.asarray(bn["bias"], jnp.float32)
    block.bn.mean[...] = jnp.asarray(bn["running_mean"], jnp.float32)
    block.bn.var[...] = jnp.asarray(bn["running_var"], jnp.float32)
    x = rng.normal(size=(2, cin, 9, 11))
    got = np.asarray(block(jnp.asarray(x.transpose(0, 2, 3, 1), jnp.float32)))
    want = _torch_conv_bn_relu(x, w, bn, stride, padding).transpose(0, 2, 3, 1)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_pools_match_torch_semantics():
    x = np.random.default_rng(1).normal(size=(2, 5, 6, 3)).astype(np.float32)
    # avg_pool2d(3, 1, 1, count_include_pad=False): mean over the in-bounds taps only.
    want = np.zeros_like(x)
    for i in range(5):
        for j in range(6):
            win = x[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2]
            want[:, i, j] = win.mean(axis=(1, 2))
    np.testing.assert_allclose(net.avg_pool_3x3(jnp.asarray(x)), want, rtol=1e-6, atol=1e-6)
    # max_pool2d(3, 1, 1): padding never wins, even against negative values.
    neg = -np.abs(x) - 1
    want = np.zeros_like(neg)
    for i in range(5):
        for j in range(6):
            want[:, i, j] = neg[:, max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].max(axis=(1, 2))
    np.testing.assert_array_equal(net.max_pool(jnp.asarray(neg), 3, 1, 1), want)
    # max_pool2d(3, 2), floor mode: 5x6 -> 2x2.
    got = np.asarray(net.max_pool(jnp.asarray(x)))
    for i in range(2):
        for j in range(2):
            want = x[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
            np.testing.assert_array_equal(got[:, i, j], want)


# ----------------------------------------------------------------------------------------
# Writing torch files without torch

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
STORAGE_NAMES = {np.dtype(np.float32): "FloatStorage", np.dtype(np.int64): "LongStorage"}


class _Storage:
    """A storage to save: a flat array under a key."""

    def __init__(self, key: str, data: np.ndarray):
        self.key, self.data = key, np.ascontiguousarray(data).reshape(-1)


class _Tensor:
    """Reduces like a torch tensor: _rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    rebuild = None  # the stand-in torch._utils._rebuild_tensor_v2, set while writing

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def __reduce_ex__(self, protocol):
        hooks = collections.OrderedDict()
        args = (self.storage, self.offset, self.size, self.stride, False, hooks)
        return (_Tensor.rebuild, args)

    def value(self) -> np.ndarray:
        a = self.storage.data
        strides = [s * a.itemsize for s in self.stride]
        return np.lib.stride_tricks.as_strided(a[self.offset :], self.size, strides).copy()


def _contiguous(arrays: dict[str, np.ndarray]) -> dict[str, _Tensor]:
    """One storage per array, C-contiguous strides in elements."""
    out = {}
    for i, (key, a) in enumerate(arrays.items()):
        stride = tuple(s // a.itemsize for s in np.array(a, order="C").strides)
        out[key] = _Tensor(_Storage(str(i), a), 0, tuple(a.shape), stride)
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
        _Tensor.rebuild = _rebuild_tensor_v2
        return self

    def __exit__(self, *exc):
        self.patch.undo()
        _Tensor.rebuild = None

    def pickler(self, f, legacy: bool) -> pickle.Pickler:
        types_ = self.types

        class Pickler(pickle.Pickler):
            def persistent_id(self, obj):
                if not isinstance(obj, _Storage):
                    return None
                stype = types_[STORAGE_NAMES[obj.data.dtype]]
                pid = ("storage", stype, obj.key, "cpu", obj.data.size)
                return (*pid, None) if legacy else pid

        return Pickler(f, protocol=2)


def _state_dict(tensors: dict[str, object]) -> collections.OrderedDict:
    sd = collections.OrderedDict(tensors)
    sd._metadata = collections.OrderedDict({"": {"version": 1}})  # as torch's state_dict()
    return sd


def _storages(tensors: dict[str, object]) -> dict[str, _Storage]:
    return {t.storage.key: t.storage for t in tensors.values() if isinstance(t, _Tensor)}


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


def _random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random FID-Inception weights in torch layouts, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in _expected_state_dict().items():
        if key.endswith("conv.weight") or key == "fc.weight":
            fan_in = np.prod(shape[1:])
            a = rng.standard_normal(shape, np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        elif key.endswith(("bn.weight", "running_var")):
            a = rng.uniform(0.5, 1.5, shape).astype(np.float32)
        else:
            a = (rng.standard_normal(shape, np.float32) * np.float32(0.1)).astype(np.float32)
        out[key] = a
    return out


# Keys a real file may carry beyond the network's: ignored by the loader.
EXTRAS = {
    "Conv2d_1a_3x3.bn.num_batches_tracked": np.array(7, np.int64),
    "AuxLogits.fc.weight": np.ones((3, 4), np.float32),
}


@pytest.fixture(scope="module")
def weights():
    return _random_weights()


@pytest.fixture(scope="module")
def legacy_file(weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("inception") / ev.WEIGHTS_FILE
    write_legacy(path, _contiguous(weights | EXTRAS))
    return path


@pytest.fixture(scope="module")
def model(legacy_file):
    return ev.build_inception(legacy_file)


def _assert_same(params: dict[str, np.ndarray], weights: dict[str, np.ndarray]) -> None:
    assert list(params) == list(ev.expected_shapes())
    for key, value in weights.items():
        assert params[key].dtype == np.float32
        np.testing.assert_array_equal(params[key], value, err_msg=key)


def test_legacy_round_trip(legacy_file, weights):
    assert "torch" not in sys.modules
    _assert_same(ev.load_inception_params(legacy_file), weights)


def test_zip_round_trip(weights, tmp_path):
    path = tmp_path / "w.pth"
    write_zip(path, _contiguous(weights | EXTRAS))
    assert "torch" not in sys.modules
    _assert_same(ev.load_inception_params(path), weights)


def test_npz_round_trip(weights, tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **weights)
    _assert_same(ev.load_inception_params(path), weights)


def test_weights_land_in_the_right_variables(model, weights):
    for path, var in nnx.to_flat_state(nnx.state(model)):
        key = net.torch_key(path)
        np.testing.assert_array_equal(net.to_torch_layout(path, np.asarray(var[...])), weights[key])
    # Spelled out once: torch OIHW [o, i, y, x] is HWIO [y, x, i, o]; fc (out, in) -> (in, out).
    w = weights["Mixed_6b.branch7x7_2.conv.weight"]  # (128, 128, 1, 7)
    kernel = np.asarray(model.Mixed_6b.branch7x7_2.conv.kernel[...])
    assert kernel.shape == (1, 7, 128, 128) and kernel[0, 5, 3, 9] == w[9, 3, 0, 5]
    assert model.fc.kernel[...][17, 4] == weights["fc.weight"][4, 17]
    var = weights["Mixed_5b.branch1x1.bn.running_var"]
    assert model.Mixed_5b.branch1x1.bn.var[...][2] == var[2]


def test_forward_with_loaded_weights_is_finite_and_deterministic(model):
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    x = jax.random.uniform(jax.random.key(0), (2, 75, 75, 3), minval=-1.0, maxval=1.0)
    out1, out2 = apply(state, x), apply(state, x)
    assert out1["pool"].shape == (2, 2048) and out1["logits"].shape == (2, 1008)
    for key in ("pool", "logits"):
        assert np.all(np.isfinite(out1[key]))
        np.testing.assert_array_equal(out1[key], out2[key])
    assert float(jnp.std(out1["pool"])) > 1e-3  # not collapsed to a constant
    assert np.all(np.asarray(out1["pool"]) >= 0)  # the mean of ReLU outputs
    assert not np.allclose(out1["pool"][0], out1["pool"][1])  # depends on the input


# ----------------------------------------------------------------------------------------
# The reader's general cases: shared storages, offsets, strides, views, byte order


def _generic_tensors():
    base = np.arange(24, dtype=np.float32) * 0.5
    shared = _Storage("7", base)
    ints = _Storage("3", np.array([5, -6, 7], np.int64))
    tensors = {
        "whole": _Tensor(shared, 0, (4, 6), (6, 1)),
        "tail": _Tensor(shared, 6, (3, 6), (6, 1)),  # the same storage at an offset
        "transposed": _Tensor(shared, 0, (6, 4), (1, 6)),  # non-contiguous strides
        "scalar": _Tensor(shared, 5, (), ()),
        "ints": _Tensor(ints, 0, (3,), (1,)),
    }
    return tensors, {k: t.value() for k, t in tensors.items()}


@pytest.mark.parametrize("fmt", ["legacy", "zip", "zip-big-endian"])
def test_reader_handles_shared_storages_and_strides(fmt, tmp_path):
    tensors, want = _generic_tensors()
    path = tmp_path / "g.pth"
    if fmt == "legacy":
        write_legacy(path, tensors)
    else:
        write_zip(path, tensors, byteorder="big" if fmt.endswith("big-endian") else "little")
    got = ev.read_state_dict(path)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_reader_rejects_a_tensor_beyond_its_storage(tmp_path):
    storage = _Storage("0", np.zeros(6, np.float32))
    path = tmp_path / "bad.pth"
    write_zip(path, {"x": _Tensor(storage, 2, (2, 3), (3, 1))})  # needs elements 2..7
    with pytest.raises(ev.WeightsError, match="exceeds its storage"):
        ev.read_state_dict(path)


# ----------------------------------------------------------------------------------------
# Preprocessing


def _torch_bilinear(img: np.ndarray, out_h: int, out_w: int, coord=np.float64) -> np.ndarray:
    """F.interpolate(bilinear, align_corners=False), written as torch's CPU kernel: clamped
    source index, right neighbour clamped at the edge, lerp in x then in y. ``coord`` is the
    type source coordinates are computed in (torch: float32 for float32 images)."""

    def taps(n_in, n_out):
        scale = coord(n_in) / coord(n_out)
        src = (np.arange(n_out, dtype=coord) + coord(0.5)) * scale - coord(0.5)
        src = np.maximum(src, coord(0.0))
        i0 = src.astype(np.int64)
        i1 = i0 + (i0 < n_in - 1)
        lam = (src - i0.astype(coord)).astype(np.float64)
        return i0, i1, 1.0 - lam, lam

    y0, y1, wy0, wy1 = taps(img.shape[0], out_h)
    x0, x1, wx0, wx1 = taps(img.shape[1], out_w)
    wx0, wx1 = wx0[None, :, None], wx1[None, :, None]
    top = img[y0][:, x0] * wx0 + img[y0][:, x1] * wx1
    bottom = img[y1][:, x0] * wx0 + img[y1][:, x1] * wx1
    return top * wy0[:, None, None] + bottom * wy1[:, None, None]


def test_resize_known_values():
    row = jnp.asarray([[0.0, 255.0]]).reshape(1, 1, 2, 1)
    got = ev.resize_bilinear(row, 1, 4)[0, 0, :, 0]
    # Half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (right edge).
    np.testing.assert_allclose(got, [0.0, 63.75, 191.25, 255.0], rtol=1e-6)


@pytest.mark.parametrize("shape", [(5, 7, 3), (8, 8, 1), (400, 310, 3), (299, 299, 3)])
def test_preprocess_matches_torch_bilinear(shape):
    img = np.random.default_rng(2).integers(0, 256, size=(2, *shape), dtype=np.uint8)
    got = np.asarray(ev.preprocess(img))
    assert got.shape == (2, 299, 299, 3) and got.dtype == np.float32
    for n in range(2):
        x = img[n].astype(np.float64) / 255.0
        for coord, atol in ((np.float32, 2e-6), (np.float64, 1e-4)):
            want = _torch_bilinear(x, 299, 299, coord) * 2.0 - 1.0
            if shape[-1] == 1:
                want = np.repeat(want, 3, axis=-1)
            # float32 coordinates as torch: equal up to rounding; the exact-coordinate
            # bilinear differs by the float32 coordinate error (~1e-5 at 400 px).
            np.testing.assert_allclose(got[n], want, rtol=0, atol=atol)


def test_preprocess_gray_range_and_checks():
    gray = np.random.default_rng(3).integers(0, 256, size=(1, 10, 12, 1), dtype=np.uint8)
    out = np.asarray(ev.preprocess(gray))
    np.testing.assert_array_equal(out, np.asarray(ev.preprocess(np.repeat(gray, 3, axis=-1))))
    assert out.min() >= -1.0 and out.max() <= 1.0
    extremes = np.stack([np.zeros((9, 9, 3), np.uint8), np.full((9, 9, 3), 255, np.uint8)])
    out = np.asarray(ev.preprocess(extremes))
    np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
    np.testing.assert_allclose(out[1], 1.0, atol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        ev.preprocess(np.zeros((1, 9, 9, 3), np.float32))
    with pytest.raises(ValueError, match="uint8"):
        ev.preprocess(np.zeros((1, 9, 9, 2), np.uint8))


# ----------------------------------------------------------------------------------------
# Errors: one line, naming what is wrong


def _error(path) -> str:
    with pytest.raises(ev.WeightsError) as info:
        ev.load_inception_params(path)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nowhere.pth"
    assert _error(path) == f"Inception weights file not found: {path}"


def test_wrong_shape_names_key_and_both_shapes(tmp_path):
    path = tmp_path / "w.npz"
    np.savez(path, **{"fc.weight": np.zeros((10, 2048), np.float32)})
    message = _error(path)
    assert "fc.weight" in message and "(10, 2048)" in message and "(1008, 2048)" in message


def test_missing_and_unexpected_keys(tmp_path):
    np.savez(tmp_path / "a.npz", **{"fc.bias": np.zeros(1008, np.float32)})
    assert "missing key 'Conv2d_1a_3x3." in _error(tmp_path / "a.npz")
    assert "471 of 472" in _error(tmp_path / "a.npz")
    np.savez(tmp_path / "b.npz", **{"Mixed_5b.extra.weight": np.zeros(3, np.float32)})
    assert "unexpected key 'Mixed_5b.extra.weight'" in _error(tmp_path / "b.npz")


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("fmt", ["legacy", "zip"])
def test_forbidden_global_is_refused_without_running(fmt, tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(collections.OrderedDict(x=_Evil(marker)), protocol=2)
    path = tmp_path / "evil.pth"
    if fmt == "legacy":
        head = b"".join(pickle.dumps(o, protocol=2) for o in (MAGIC_NUMBER, 1001, {}))
        path.write_bytes(head + payload + pickle.dumps([], protocol=2))
    else:
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", payload)
    message = _error(path)
    assert "refused to unpickle global" in message and "system" in message
    assert not marker.exists()


def test_unreadable_files(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"definitely not weights" * 10)
    assert "unsupported format" in _error(tmp_path / "junk.pth")
    tensors, _ = _generic_tensors()
    write_legacy(tmp_path / "g.pth", tensors)
    raw = (tmp_path / "g.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(raw[: len(raw) - 10])
    assert "truncated" in _error(tmp_path / "cut.pth")
    (tmp_path / "cut2.pth").write_bytes(raw[:40])
    assert "cannot read" in _error(tmp_path / "cut2.pth")


# ----------------------------------------------------------------------------------------
# The extractor


def test_extractor(legacy_file):
    extractor = ev.make_inception_extractor(legacy_file, batch_size=2)
    assert extractor.name == "inception_v3_fid"
    assert extractor.checksum == hashlib.sha256(legacy_file.read_bytes()).hexdigest()
    assert (extractor.feature_dim, extractor.num_classes) == (2048, 1008)
    assert extractor.settings["input_size"] == 299
    assert extractor.settings["resize"] == ev.RESIZE
    assert extractor.settings["file"] == ev.WEIGHTS_FILE
    images = np.random.default_rng(4).integers(0, 256, size=(3, 16, 16, 1), dtype=np.uint8)
    features, logits = extractor(images)  # two calls, the second on a zero-padded batch
    assert features.shape == (3, 2048) and logits.shape == (3, 1008)
    assert features.dtype == logits.dtype == np.float32
    assert np.all(np.isfinite(features)) and np.all(np.isfinite(logits))
    assert not np.allclose(features[0], features[2])
