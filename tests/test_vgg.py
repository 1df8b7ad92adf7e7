"""VGG-19 feature network: layer selection, torchvision's .pth and Keras' .h5 loaders (the
same weights give the same features through either file), one-line errors.

The weights files are random, written here: .pth in torch's zip format without torch
(tests/torch_files.py), .h5 with h5py in the layouts Keras 1/2/3 use.
"""

from __future__ import annotations

import collections
import pickle
import zipfile

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from errors import UserError
from networks import vgg
from tests.torch_files import contiguous, write_zip

# ----------------------------------------------------------------------------------------
# Random weights and the files that carry them


def _random_weights(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """conv name -> (OIHW kernel, bias): torchvision's layout, He-scaled."""
    rng = np.random.default_rng(seed)
    out = {}
    for name, (cin, cout) in vgg.conv_shapes().items():
        kernel = rng.standard_normal((cout, cin, 3, 3), np.float32) * np.sqrt(2 / (9 * cin))
        out[name] = (kernel.astype(np.float32), rng.normal(0, 0.1, cout).astype(np.float32))
    return out


def _torch_arrays(weights) -> dict[str, np.ndarray]:
    arrays = {}
    for name, (kernel, bias) in weights.items():
        i = vgg.TORCH_INDEX[name]
        arrays[f"features.{i}.weight"], arrays[f"features.{i}.bias"] = kernel, bias
    arrays["classifier.6.bias"] = np.zeros(1000, np.float32)  # ignored by the loader
    return arrays


def _keras_arrays(weights) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras' VGG19 of the same function: HWIO kernels, conv1_1 reading BGR input."""
    out = {}
    for name, (kernel, bias) in weights.items():
        hwio = kernel.transpose(2, 3, 1, 0)
        if name == "conv1_1":
            hwio = hwio[:, :, ::-1, :]
        out[f"block{name[4]}_conv{name[6]}"] = (np.ascontiguousarray(hwio), bias)
    return out


def _write_h5(path, layers: dict[str, tuple[np.ndarray, np.ndarray]], layout: str) -> None:
    """``layout``: 'v1' (the applications' release files: block1_conv1/block1_conv1_W_1:0),
    'model' (Keras 2 model.save: model_weights/<layer>/<layer>/kernel:0, with optimiser
    slots of the same names), 'keras3' (layers/<layer>/vars/0 and 1)."""
    with h5py.File(path, "w") as f:
        for layer, (kernel, bias) in layers.items():
            if layout == "v1":
                f[f"{layer}/{layer}_W_1:0"], f[f"{layer}/{layer}_b_1:0"] = kernel, bias
            elif layout == "model":
                g = f.require_group(f"model_weights/{layer}/{layer}")
                g["kernel:0"], g["bias:0"] = kernel, bias
                f[f"optimizer_weights/training/Adam/{layer}/kernel:0"] = np.zeros(1, np.float32)
            else:
                f[f"layers/{layer}/vars/0"], f[f"layers/{layer}/vars/1"] = kernel, bias
        if layout == "model":
            f["model_weights/fc1/fc1/kernel:0"] = np.zeros((4, 2), np.float32)  # the top


@pytest.fixture(scope="module")
def weights():
    return _random_weights()


@pytest.fixture(scope="module")
def files(weights, tmp_path_factory):
    root = tmp_path_factory.mktemp("vgg")
    write_zip(root / "vgg19.pth", contiguous(_torch_arrays(weights)))
    _write_h5(root / "vgg19.h5", _keras_arrays(weights), "v1")
    return root


@pytest.fixture(scope="module")
def models(files):
    """The two loaded networks, built once for the module (VGG-19 is 20M parameters)."""
    return vgg.load_vgg19(files / "vgg19.pth"), vgg.load_vgg19(files / "vgg19.h5")


@pytest.fixture(scope="module")
def images():
    return jnp.asarray(np.random.default_rng(1).uniform(size=(1, 32, 32, 3)), jnp.float32)


# ----------------------------------------------------------------------------------------
# The network


def test_layer_names_and_torch_indices():
    assert len(vgg.LAYER_NAMES) == 16 * 2 + 5 and len(vgg.CONV_NAMES) == 16
    assert vgg.LAYER_NAMES[:5] == ("conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1")
    assert vgg.LAYER_NAMES[-1] == "pool5"
    want = (0, 2, 5, 7, 10, 12, 14, 16, 19, 21, 23, 25, 28, 30, 32, 34)
    assert tuple(vgg.TORCH_INDEX[n] for n in vgg.CONV_NAMES) == want


def test_torch_loader_layout_and_preprocessing(models, weights, images):
    """conv1_1 at an interior pixel, written out from the OIHW weights (cross-correlation
    of the ImageNet-normalised input): pins down the kernel transposition."""
    torch_model, _ = models
    assert (torch_model.origin, torch_model.pooling) == ("torchvision", "avg")
    out = torch_model(images, ["conv1_1"])["conv1_1"]
    x = (np.asarray(images[0]) - vgg.IMAGENET_MEAN) / vgg.IMAGENET_STD
    kernel, bias = weights["conv1_1"]
    y, xx = 10, 17
    window = x[y - 1 : y + 2, xx - 1 : xx + 2, :]  # (i, j, c)
    want = np.einsum("ocij,ijc->o", kernel, window) + bias
    np.testing.assert_allclose(np.asarray(out[0, y, xx]), want, rtol=1e-4, atol=1e-4)


def test_both_loaders_give_the_same_features(models, images):
    """Keras' caffe preprocessing of x equals torchvision's normalisation of x2 below, so
    with the same weights (transposed, conv1_1 on BGR) every layer must agree."""
    torch_model, keras_model = models
    assert keras_model.origin == "keras"
    caffe_rgb = 255.0 * images - jnp.asarray(vgg.CAFFE_MEAN_BGR[::-1])
    x2 = caffe_rgb * jnp.asarray(vgg.IMAGENET_STD) + jnp.asarray(vgg.IMAGENET_MEAN)
    layers = ["conv1_1", "relu2_2", "pool3", "conv4_2", "relu5_1"]
    got, want = keras_model(images, layers), torch_model(x2, layers)
    assert list(got) == layers
    for name in layers:
        scale = float(jnp.max(jnp.abs(want[name]))) + 1e-6
        np.testing.assert_allclose(got[name] / scale, want[name] / scale, atol=1e-4, err_msg=name)


def test_shapes_pooling_and_depth(models, images):
    torch_model, _ = models
    out = torch_model(images, ["pool5", "relu1_1", "pool2"])
    assert list(out) == ["pool5", "relu1_1", "pool2"]  # the order asked for
    assert out["pool5"].shape == (1, 1, 1, 512) and out["pool2"].shape == (1, 8, 8, 128)
    x = torch_model(images, ["relu1_2", "pool1"])
    want = x["relu1_2"].reshape(1, 16, 2, 16, 2, 64).mean(axis=(2, 4))
    np.testing.assert_allclose(x["pool1"], want, rtol=1e-6, atol=1e-6)

    def ops(layers):  # the network's convolutions in the traced program
        jaxpr = jax.make_jaxpr(lambda x: torch_model(x, layers))(images)
        names = [str(e.primitive) for e in jaxpr.jaxpr.eqns]
        return sum(n in ("conv_general_dilated", "dot_general") for n in names)

    assert ops(["relu1_1"]) == 1 and ops(["conv2_1", "relu1_1"]) == 3
    assert ops(None) == 16


def test_max_pooling_option(files, images):
    model = vgg.load_vgg19(files / "vgg19.pth", pooling="max")
    x = model(images, ["relu1_2", "pool1"])
    want = x["relu1_2"].reshape(1, 16, 2, 16, 2, 64).max(axis=(2, 4))
    np.testing.assert_allclose(x["pool1"], want)


@pytest.mark.parametrize("layout", ["model", "keras3"])
def test_keras_layouts(layout, weights, tmp_path):
    layers = _keras_arrays(weights)
    _write_h5(tmp_path / "w.h5", layers, layout)
    got = vgg.read_keras_weights(tmp_path / "w.h5")
    for name, (kernel, bias) in got.items():
        want_kernel, want_bias = layers[f"block{name[4]}_conv{name[6]}"]
        np.testing.assert_array_equal(kernel, want_kernel)
        np.testing.assert_array_equal(bias, want_bias)


# ----------------------------------------------------------------------------------------
# Errors: one line, naming the file and the problem


def _message(call, *args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_unknown_layer(models, images):
    message = _message(models[0], images, ["conv1_1", "conv6_1"])
    assert "'conv6_1'" in message and "conv1_1, relu1_1" in message and "pool5" in message
    assert "'fc7'" in _message(vgg.check_layers, "fc7")


def _small_torch_arrays(bad_key: str, bad_shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Every key present: correct shapes up to ``bad_key``, which is wrong (later tensors
    are never looked at), so the file stays small."""
    arrays, seen = {}, False
    for name, (cin, cout) in vgg.conv_shapes().items():
        i = vgg.TORCH_INDEX[name]
        for key, shape in (
            (f"features.{i}.weight", (cout, cin, 3, 3)),
            (f"features.{i}.bias", (cout,)),
        ):
            seen = seen or key == bad_key
            shape = bad_shape if key == bad_key else shape if not seen else (1,)
            arrays[key] = np.zeros(shape, np.float32)
    return arrays


def test_wrong_shape_names_key_and_shapes(tmp_path):
    path = tmp_path / "bad.pth"
    write_zip(path, contiguous(_small_torch_arrays("features.2.weight", (64, 64, 5, 5))))
    message = _message(vgg.load_vgg19, path)
    assert message.startswith(f"VGG-19 weights file {path}: features.2.weight")
    assert "(64, 64, 5, 5)" in message and "(64, 64, 3, 3)" in message

    layers = {"block1_conv1": (np.zeros((3, 3, 3, 64), np.float32), np.zeros(64, np.float32))}
    layers["block1_conv2"] = (np.zeros((64, 64, 3, 3), np.float32), np.zeros(64, np.float32))
    for name in vgg.CONV_NAMES[2:]:
        layers[f"block{name[4]}_conv{name[6]}"] = (np.zeros(1, np.float32),) * 2
    _write_h5(tmp_path / "bad.h5", layers, "v1")
    message = _message(vgg.load_vgg19, tmp_path / "bad.h5")
    assert (
        "block1_conv2/block1_conv2_W_1:0 has shape (64, 64, 3, 3), expected (3, 3, 64, 64)"
        in message
    )


def test_other_networks_files(tmp_path):
    inception_like = {"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32)}
    write_zip(tmp_path / "inception.pth", contiguous(inception_like))
    message = _message(vgg.load_vgg19, tmp_path / "inception.pth")
    assert "missing key 'features.0.weight' (32 of 32 missing): not torchvision's vgg19" in message

    arrays = _small_torch_arrays("none", ())
    arrays["features.1.running_mean"] = np.zeros(64, np.float32)  # a batch-norm network
    np.savez(tmp_path / "bn.npz", **arrays)
    assert "unexpected key 'features.1.running_mean'" in _message(
        vgg.load_vgg19, tmp_path / "bn.npz"
    )

    with h5py.File(tmp_path / "resnet.h5", "w") as f:
        f["conv1_conv/conv1_conv/kernel:0"] = np.zeros((7, 7, 3, 64), np.float32)
    message = _message(vgg.load_vgg19, tmp_path / "resnet.h5")
    assert "no kernel for layer block1_conv1 (32 of 32 datasets missing)" in message


class _Evil:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_a_pickled_object_is_refused_not_run(tmp_path):
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "evil.pth", "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps(collections.OrderedDict(x=_Evil(marker))))
    message = _message(vgg.load_vgg19, tmp_path / "evil.pth")
    assert message.startswith(f"VGG-19 weights file {tmp_path / 'evil.pth'}: cannot read")
    assert "refused to unpickle global" in message and "system'" in message
    assert not marker.exists()


def test_missing_unreadable_and_wrong_extension(tmp_path):
    assert _message(vgg.load_vgg19, tmp_path / "no.pth") == (
        f"VGG-19 weights file not found: {tmp_path / 'no.pth'}"
    )
    (tmp_path / "junk.h5").write_bytes(b"not hdf5 at all" * 20)
    assert "cannot read it as HDF5" in _message(vgg.load_vgg19, tmp_path / "junk.h5")
    (tmp_path / "junk.pth").write_bytes(b"not torch at all" * 20)
    assert "unsupported format" in _message(vgg.load_vgg19, tmp_path / "junk.pth")
    (tmp_path / "w.bin").write_bytes(b"\0" * 8)
    message = _message(vgg.load_vgg19, tmp_path / "w.bin")
    assert "unsupported extension '.bin'" in message and ".pth" in message and ".h5" in message


def test_bad_options():
    assert "pooling must be one of ('avg', 'max')" in _message(vgg.VGG19, "mean", rngs=None)
