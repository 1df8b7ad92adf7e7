"""The project's digits feature network: accurate, pinned in the repository, and (for
other recipes) cached and rebuilt bit-for-bit."""

import dataclasses
import hashlib

import numpy as np
import pytest

from data import pipeline
from errors import UserError
from evaluation import digits_features

TINY_RECIPE = digits_features.Recipe(epochs=1, width=4, feature_dim=8)


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def extractor():
    return digits_features.make_digits_extractor()


def test_the_feature_network_classifies_test_digits_at_97_percent(extractor):
    assert extractor.settings["test_accuracy"] >= 0.97
    test = pipeline.read_split(digits_features._digits_config(None), "test")
    features, logits = extractor(test["image"])
    assert features.shape == (360, 64) and logits.shape == (360, 10)
    assert np.mean(logits.argmax(-1) == test["label"]) >= 0.97


def test_features_have_unit_mean_square_on_the_train_split(extractor):
    train = pipeline.read_split(digits_features._digits_config(None), "train")
    features, _ = extractor(train["image"])
    assert np.mean(features.astype(np.float64) ** 2) == pytest.approx(1.0, rel=1e-4)


def test_the_default_network_is_the_pinned_file_and_is_never_retrained(extractor,
                                                                       monkeypatch):
    assert extractor.checksum == digits_features.PINNED_SHA256
    assert extractor.checksum == _sha(digits_features.PINNED_FILE)
    assert extractor.settings["file"] == str(digits_features.PINNED_FILE)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the network is pinned")

    monkeypatch.setattr(digits_features, "train", no_training)
    again = digits_features.make_digits_extractor()
    assert again.checksum == extractor.checksum


@pytest.mark.parametrize("damage, message", [
    ("missing", "is missing: restore it from the repository"),
    ("altered", r"has sha256 [0-9a-f]{12}, not the pinned 61824ec9dde9: restore it"),
])
def test_a_missing_or_altered_pinned_network_is_refused_in_one_line(monkeypatch, tmp_path,
                                                                    damage, message):
    """Another file would silently move every FD: refused, not retrained or used."""
    copy = tmp_path / "digits_cnn.npz"
    if damage == "altered":
        data = bytearray(digits_features.PINNED_FILE.read_bytes())
        data[-100] ^= 1
        copy.write_bytes(bytes(data))
    monkeypatch.setattr(digits_features, "PINNED_FILE", copy)
    with pytest.raises(UserError, match=message):
        digits_features.make_digits_extractor()


def test_cache_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOREGEN_CACHE_DIR", str(tmp_path / "a"))
    assert digits_features.cache_dir() == tmp_path / "a"
    monkeypatch.delenv("SCOREGEN_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert digits_features.cache_dir() == tmp_path / "xdg" / "scoregen"


def test_deleting_the_cache_rebuilds_the_same_file_bit_for_bit(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOREGEN_CACHE_DIR", str(tmp_path))
    _, path, _, _ = digits_features.load_or_train(TINY_RECIPE)
    first = _sha(path)
    path.unlink()
    _, rebuilt, _, _ = digits_features.load_or_train(TINY_RECIPE)
    assert rebuilt == path and _sha(rebuilt) == first


def test_a_damaged_cache_file_is_rebuilt(monkeypatch, tmp_path):
    monkeypatch.setenv("SCOREGEN_CACHE_DIR", str(tmp_path))
    _, path, _, _ = digits_features.load_or_train(TINY_RECIPE)
    good = _sha(path)
    path.write_bytes(b"not an npz")
    _, path, _, _ = digits_features.load_or_train(TINY_RECIPE)
    assert _sha(path) == good


def test_a_different_recipe_is_a_different_file():
    other = dataclasses.replace(TINY_RECIPE, seed=1)
    assert other.digest() != TINY_RECIPE.digest()
