"""The project's digits feature network: accurate, cached, and rebuilt bit-for-bit."""

import dataclasses
import hashlib

import numpy as np
import pytest

from data import pipeline
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


def test_it_is_cached_under_the_cache_dir_and_loaded_without_training(extractor, monkeypatch):
    path = digits_features.cache_dir() / f"digits_cnn-{digits_features.Recipe().digest()}.npz"
    assert path.is_file() and extractor.checksum == _sha(path)

    def no_training(*args, **kwargs):
        raise AssertionError("retrained although the cache is there")

    monkeypatch.setattr(digits_features, "train", no_training)
    again = digits_features.make_digits_extractor()
    assert again.checksum == extractor.checksum


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
