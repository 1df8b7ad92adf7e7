"""Tests for the FID Inception-v3's torch-free weights loading: both torch formats and
npz, the reader's general cases, one-line errors, and the extractor built on a file.

The weights files are written here, in torch's own formats, without torch
(tests/torch_files.py).
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import sys
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from evaluation import inception as ev
from networks import inception as net
from networks import torch_state_dict
from tests.torch_files import MAGIC_NUMBER, Storage, Tensor, contiguous, write_legacy, write_zip

# ----------------------------------------------------------------------------------------
# Random weights in torch layouts, and the round trips


def _random_weights(seed: int = 0) -> dict[str, np.ndarray]:
    """Random FID-Inception weights in torch layouts, scaled so activations stay O(1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, shape in ev.expected_shapes().items():
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
    write_legacy(path, contiguous(weights | EXTRAS))
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
    write_zip(path, contiguous(weights | EXTRAS))
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
    shared = Storage("7", base)
    ints = Storage("3", np.array([5, -6, 7], np.int64))
    tensors = {
        "whole": Tensor(shared, 0, (4, 6), (6, 1)),
        "tail": Tensor(shared, 6, (3, 6), (6, 1)),  # the same storage at an offset
        "transposed": Tensor(shared, 0, (6, 4), (1, 6)),  # non-contiguous strides
        "scalar": Tensor(shared, 5, (), ()),
        "ints": Tensor(ints, 0, (3,), (1,)),
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
    got = torch_state_dict.read_state_dict(path)
    assert list(got) == list(want)
    for key in want:
        assert got[key].dtype == want[key].dtype.newbyteorder("=")
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)


def test_reader_rejects_a_tensor_beyond_its_storage(tmp_path):
    storage = Storage("0", np.zeros(6, np.float32))
    path = tmp_path / "bad.pth"
    write_zip(path, {"x": Tensor(storage, 2, (2, 3), (3, 1))})  # needs elements 2..7
    with pytest.raises(torch_state_dict.WeightsError, match="exceeds its storage"):
        torch_state_dict.read_state_dict(path)


# ----------------------------------------------------------------------------------------
# Errors: one line, naming what is wrong


def _error(path) -> str:
    with pytest.raises(torch_state_dict.WeightsError) as info:
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
