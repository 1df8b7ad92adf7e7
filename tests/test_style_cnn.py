"""style_cnn, the offline default feature network of style transfer: its layers and
errors, the pinned weights file and its sha256 check, and the training recipe's
determinism (on a tiny setting)."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from errors import UserError
from networks import style_cnn
from style import feature_training, pretrained

ROOT = Path(__file__).resolve().parents[1]
X64 = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 64, 64, 3)), jnp.float32)


@pytest.fixture(scope="module")
def trained() -> style_cnn.StyleCNN:
    return pretrained.load_style_cnn()


def test_layer_names_follow_vgg():
    names = style_cnn.LAYER_NAMES
    assert names[:6] == ("conv1_1", "relu1_1", "pool1", "conv2_1", "relu2_1", "pool2")
    assert names[-2:] == ("conv5_1", "relu5_1")
    for layer in style_cnn.DEFAULT_STYLE_LAYERS + style_cnn.DEFAULT_CONTENT_LAYERS:
        assert layer in names
    # GatysOptions' default layers (the paper's VGG names) exist too.
    for layer in ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1", "conv4_2"):
        assert layer in names


def test_output_shapes_at_64(trained):
    out = trained(X64)
    assert tuple(out) == style_cnn.LAYER_NAMES
    channels = style_cnn.layer_channels()
    for name, value in out.items():
        block = int(name[4]) if not name.startswith("pool") else int(name[4]) + 1
        side = 64 >> (block - 1)
        assert value.shape == (2, side, side, channels[name]), name
        assert value.dtype == jnp.float32
    assert np.all(np.asarray(out["relu3_1"]) >= 0)


def test_only_the_layers_asked_for_in_their_order(trained):
    out = trained(X64, ("relu2_1", "conv1_1"))
    assert tuple(out) == ("relu2_1", "conv1_1")
    np.testing.assert_array_equal(out["relu2_1"], trained(X64)["relu2_1"])


def test_unknown_layer_and_bad_input_are_one_line_errors(trained):
    with pytest.raises(UserError, match="unknown style_cnn layer 'conv5_4'") as err:
        trained(X64, ("relu1_1", "conv5_4"))
    assert "valid names: conv1_1, relu1_1, pool1" in str(err.value)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="RGB images"):
        trained(X64[..., :1])


def test_the_pinned_file_is_the_pinned_one_and_ships():
    assert pretrained.PINNED_FILE == ROOT / "style" / "style_cnn.npz"
    assert pretrained.sha256(pretrained.PINNED_FILE) == pretrained.PINNED_SHA256
    assert pretrained.PINNED_FILE.stat().st_size < 2_000_000
    _, extras = pretrained.read_weights(pretrained.PINNED_FILE)
    assert extras["recipe"] == feature_training.Recipe().as_dict()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "style_cnn.npz" in package_data["package-data"]["style"]


def test_an_altered_or_missing_file_is_a_one_line_error(tmp_path):
    copy = tmp_path / "style_cnn.npz"
    shutil.copy(pretrained.PINNED_FILE, copy)
    pretrained.load_style_cnn(copy)  # an unaltered copy loads
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 1
    copy.write_bytes(bytes(data))
    with pytest.raises(UserError, match="not the pinned") as err:
        pretrained.load_style_cnn(copy)
    message = str(err.value)
    assert "\n" not in message and "git checkout -- style/style_cnn.npz" in message
    with pytest.raises(UserError, match="is missing") as err:
        pretrained.load_style_cnn(tmp_path / "gone.npz")
    assert "\n" not in str(err.value) and "git checkout -- style/style_cnn.npz" in str(err.value)


def test_read_weights_refuses_other_files(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, w=np.zeros(3, np.float32))
    with pytest.raises(UserError, match="no array 'conv1_1/"):
        pretrained.read_weights(path)
    with pytest.raises(UserError, match="not found"):
        pretrained.read_weights(tmp_path / "gone.npz")


def test_trained_features_are_not_a_random_init(trained):
    random = style_cnn.StyleCNN(rngs=nnx.Rngs(0))
    for name in ("conv1_1", "conv3_2", "conv5_1"):
        a = np.asarray(getattr(trained, name).kernel[...])
        b = np.asarray(getattr(random, name).kernel[...])
        assert np.linalg.norm(a - b) > 0.5 * np.linalg.norm(b), name
    ft, fr = trained(X64, ("relu3_1",))["relu3_1"], random(X64, ("relu3_1",))["relu3_1"]
    assert not np.allclose(ft, fr, rtol=0.1, atol=0.1)


def test_the_recipe_is_deterministic(tmp_path):
    recipe = feature_training.Recipe(
        steps=2, batch_size=4, image_size=48, crop=32, crop_min=16, crop_max=40,
        photos=("astronaut", "brick"),
    )
    digests = []
    for i in range(2):
        model, accuracy = feature_training.train(recipe, eval_batches=1)
        digests.append(pretrained.write_weights(tmp_path / f"{i}.npz", model,
                                                recipe.as_dict(), accuracy))
    assert digests[0] == digests[1]
    trained_twice = pretrained.read_weights(tmp_path / "0.npz")[0]
    init = style_cnn.StyleCNN(rngs=nnx.Rngs(recipe.seed))
    # Two steps moved the weights.
    assert not np.array_equal(trained_twice.conv1_1.kernel[...], init.conv1_1.kernel[...])


def test_folding_the_batch_normalisation_keeps_the_function():
    net = style_cnn.StyleCNN(rngs=nnx.Rngs(3))
    x = X64[:, :32, :32]
    layers = style_cnn.DEFAULT_STYLE_LAYERS
    normalised, _ = feature_training.normalised_features(net, x, layers)
    folded = feature_training.fold_normalisation(net, x)(x, layers)
    for name in layers:
        np.testing.assert_allclose(folded[name], normalised[name], rtol=2e-4, atol=2e-4)
    fresh = style_cnn.StyleCNN(rngs=nnx.Rngs(3))
    assert np.array_equal(net.conv1_1.kernel[...], fresh.conv1_1.kernel[...])  # left alone


def test_recipe_errors():
    with pytest.raises(UserError, match="unknown"):
        feature_training.Recipe(photos=("no_such_photo",))
    with pytest.raises(UserError, match="crop_min"):
        feature_training.Recipe(crop_min=300)
