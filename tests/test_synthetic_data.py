"""data/synthetic.py through the grain pipeline: shapes, values, determinism, splits, a
2-step training run, and data.data_dir resolved through etils.epath."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest
from etils import epath

from configs import cifar10_ddpmpp_vp
from data import digits, pipeline, prepare, sources, synthetic
from errors import UserError
from tests.batches import assert_batches_equal
from tests.configs import tiny
from training import loop

SHAPES = [(8, 1), (12, 3)]  # (image_size, num_channels)


def make_config(size: int = 8, channels: int = 1, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "dataset": "synthetic",
            "image_size": size,
            "num_channels": channels,
            "centered": True,
            "random_flip": False,
            "uniform_dequantization": False,
            "data_dir": None,
            "num_synthetic_samples": 200,
        }
    )
    config.update(overrides)
    return config


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


@pytest.mark.parametrize(("size", "channels"), SHAPES)
def test_info_and_train_batches(size, channels):
    config = make_config(size, channels)
    assert pipeline.get_info(config) == pipeline.DatasetInfo(
        "synthetic", (size, size, channels), 10, 200, 40
    )
    batches = take(pipeline.make_train_iterator(config, global_batch_size=32, seed=0), 3)
    for batch in batches:
        assert set(batch) == {"image", "label"}
        image, label = batch["image"], batch["label"]
        assert image.dtype == np.float32 and image.shape == (32, size, size, channels)
        assert label.dtype == np.int32 and label.shape == (32,)
        assert 0 <= label.min() and label.max() <= 9
        # Centred uint8 images: on the 255-level grid of [-1, 1], using the whole range.
        assert image.min() == -1.0 and image.max() == 1.0
        levels = (image + 1.0) / 2.0 * 255.0
        np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)
    labels = np.concatenate([b["label"] for b in batches])
    assert len(np.unique(labels)) == 10  # 96 draws from 10 classes hit them all

    # The same seed gives the same stream; another seed another order of the same data.
    again = take(pipeline.make_train_iterator(config, global_batch_size=32, seed=0), 3)
    assert_batches_equal(again, batches)
    other = next(pipeline.make_train_iterator(config, global_batch_size=32, seed=1))
    assert not np.array_equal(other["image"], batches[0]["image"])


@pytest.mark.parametrize(("size", "channels"), SHAPES)
def test_examples_are_a_pure_function_of_split_and_index(size, channels):
    train = pipeline.read_split(make_config(size, channels), "train", limit=50)
    assert train["image"].dtype == np.uint8
    assert train["image"].shape == (50, size, size, channels)
    assert train["label"].dtype == np.int32 and set(train["label"]) <= set(range(10))
    # A larger dataset starts with the same examples; a fresh source rebuilds each one.
    bigger = pipeline.read_split(make_config(size, channels, num_synthetic_samples=10**6),
                                 "train", limit=50)
    assert_batches_equal([bigger], [train])
    records = synthetic.SyntheticRecords("train", 50, (size, size, channels))
    for i in (0, 17, 49, -1):
        record = records[i]
        np.testing.assert_array_equal(record["image"], train["image"][i])
        assert record["label"] == train["label"][i]
    with pytest.raises(IndexError):
        records[50]
    assert len(list(records)) == 50  # a well-behaved Sequence: iteration stops


def test_train_and_test_splits_differ():
    config = make_config()
    train = pipeline.read_split(config, "train")
    test = pipeline.read_split(config, "test")
    assert len(train["image"]) == 200 and len(test["image"]) == 40
    train_bytes = {image.tobytes() for image in train["image"]}
    assert not any(image.tobytes() in train_bytes for image in test["image"])
    with pytest.raises(pipeline.DataError, match=r"has splits \['test', 'train'\], not 'valid'"):
        pipeline.read_split(config, "valid")


def test_eval_covers_the_test_split_once_in_order():
    config = make_config(random_flip=True)  # flip must not apply to eval
    batches = list(pipeline.make_eval_iterator(config, batch_size=16))
    assert len(batches) == 3  # ceil(40 / 16)
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask.sum() == 40 and not mask[40:].any()
    images = np.concatenate([b["image"] for b in batches])[:40]
    labels = np.concatenate([b["label"] for b in batches])[:40]
    stored = pipeline.read_split(config, "test")
    np.testing.assert_array_equal(np.round((images + 1) / 2 * 255).astype(np.uint8),
                                  stored["image"])
    np.testing.assert_array_equal(labels, stored["label"])


def test_image_options_apply_unchanged():
    plain_config = make_config(centered=False)
    plain = next(pipeline.make_train_iterator(plain_config, global_batch_size=64, seed=3))
    dequantized = make_config(centered=False, uniform_dequantization=True)
    noisy = next(pipeline.make_train_iterator(dequantized, global_batch_size=64, seed=3))
    x = noisy["image"]
    assert 0.0 <= x.min() and x.max() < 1.0
    np.testing.assert_array_equal(np.floor(x * 256), np.round(plain["image"] * 255))
    flipping = make_config(centered=False, random_flip=True)
    flipped = next(pipeline.make_train_iterator(flipping, global_batch_size=64, seed=3))
    mirror = np.all(flipped["image"] == plain["image"][:, :, ::-1], axis=(1, 2, 3))
    same = np.all(flipped["image"] == plain["image"], axis=(1, 2, 3))
    assert np.all(mirror | same) and 0.25 < mirror.mean() < 0.75


def test_iterator_state_round_trip():
    config = make_config(random_flip=True, uniform_dequantization=True)
    it = pipeline.make_train_iterator(config, global_batch_size=32, seed=7)
    take(it, 5)
    state = json.loads(json.dumps(it.get_state()))
    assert state["pipeline"]["dataset"] == "synthetic"
    expected = take(it, 8)  # crosses the end of the 200-example epoch
    restored = pipeline.make_train_iterator(config, global_batch_size=32, seed=7)
    restored.set_state(state)
    assert_batches_equal(take(restored, 8), expected)


def test_a_huge_dataset_is_generated_lazily():
    config = make_config(16, 3, num_synthetic_samples=10**9)
    info = pipeline.get_info(config)
    assert (info.num_train, info.num_test) == (10**9, 2 * 10**8)
    batch = next(pipeline.make_train_iterator(config, global_batch_size=8, seed=0))
    assert batch["image"].shape == (8, 16, 16, 3)


def test_cifar_config_on_synthetic_data_gives_cifar_batches():
    config = cifar10_ddpmpp_vp.get_config()
    config.data.dataset = "synthetic"
    batch_size = config.training.batch_size
    info = pipeline.get_info(config.data)
    assert info == pipeline.DatasetInfo("synthetic", (32, 32, 3), 10, 50_000, 10_000)
    batch = next(pipeline.make_train_iterator(config.data, global_batch_size=batch_size, seed=0))
    assert batch["image"].shape == (batch_size, 32, 32, 3)
    assert batch["image"].dtype == np.float32 and batch["label"].dtype == np.int32
    assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


@pytest.mark.parametrize(
    ("key", "value"),
    [("image_size", 0), ("num_channels", None), ("num_synthetic_samples", 0)],
)
def test_bad_sizes_are_refused_naming_the_setting(key, value):
    with pytest.raises(pipeline.DataError) as caught:
        pipeline.get_info(make_config(**{key: value}))
    assert str(caught.value) == f"config.data.{key} must be a positive int, got {value!r}"
    assert isinstance(caught.value, UserError)


def test_nothing_to_prepare(tmp_path):
    assert "nothing to prepare" in prepare.prepare("synthetic", os.fspath(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_class_conditional_training_runs_two_steps_and_writes_a_checkpoint(tmp_path):
    config = tiny.get_config("vpsde")
    config.data.dataset = "synthetic"
    config.data.num_synthetic_samples = 100  # a test split of 20 >= one batch of 16: eval_loss
    config.model.num_classes = 10  # synthetic data has labels: get_info says 10 classes
    config.training.n_iters = 2
    config.training.eval_freq = 2
    config.training.snapshot_sampling = False
    result = loop.run(config, tmp_path, devices=jax.devices()[:1])
    assert result["step"] == 2
    assert np.isfinite(result["loss"]) and np.isfinite(result["eval_loss"])
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["2"]
    assert json.loads((tmp_path / "config.json").read_text())["data"]["dataset"] == "synthetic"


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tfds")
    digits.prepare(path)
    return path


def test_data_dir_is_resolved_through_epath(digits_dir, monkeypatch):
    resolved = sources.resolve_data_dir(digits_dir)
    assert isinstance(resolved, epath.Path) and resolved == epath.Path(digits_dir)
    # Relative and ~ paths become absolute, and a prepared dataset is found through them.
    monkeypatch.chdir(digits_dir.parent)
    monkeypatch.setenv("HOME", os.fspath(digits_dir.parent))
    for given in (digits_dir.name, f"~/{digits_dir.name}", epath.Path(digits_dir)):
        assert sources.resolve_data_dir(given) == epath.Path(digits_dir)
        info = pipeline.get_info(
            {"dataset": "digits", "image_size": 8, "num_channels": 1, "data_dir": given}
        )
        assert (info.num_train, info.num_test, info.num_classes) == (1437, 360, 10)
    monkeypatch.setenv("TFDS_DATA_DIR", digits_dir.name)
    assert sources.resolve_data_dir(None) == epath.Path(digits_dir)
    assert sorted(p.name for p in digits_dir.iterdir()) == ["digits"]  # nothing else written


@pytest.mark.skipif(
    any(importlib.util.find_spec(m) for m in ("gcsfs", "tensorflow")),
    reason="gs:// is supported here",
)
def test_a_bucket_without_its_file_system_is_a_one_line_error(monkeypatch):
    config = {"dataset": "mnist", "image_size": 28, "num_channels": 1, "data_dir": "gs://b/d"}
    with pytest.raises(UserError) as caught:
        pipeline.get_info(config)
    message = str(caught.value)
    assert "\n" not in message
    assert message == ("the data.data_dir 'gs://b/d' needs gs:// support: pip install gcsfs "
                       "(or tensorflow)")
    monkeypatch.setenv("TFDS_DATA_DIR", "gs://b/env")
    with pytest.raises(UserError, match=r"data.data_dir \(from \$TFDS_DATA_DIR\) 'gs://b/env'"):
        pipeline.get_info({**config, "data_dir": None})


def test_an_unknown_dataset_keeps_its_one_line_error(tmp_path):
    config = make_config(data_dir=os.fspath(tmp_path), dataset="no_such_dataset")
    with pytest.raises(pipeline.DataError) as caught:
        pipeline.get_info(config)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("unknown dataset 'no_such_dataset': not 'digits', not 'synthetic'")
    assert isinstance(caught.value, UserError)
    assert list(tmp_path.iterdir()) == []


def test_digits_are_not_written_into_a_bucket(tmp_path, monkeypatch):
    # Writing relies on a local os.rename; a bucket without a prepared copy is refused
    # rather than turned into a local folder named 'gs:'.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(digits, "is_prepared", lambda data_dir: False)
    with pytest.raises(UserError) as caught:
        digits.prepare("gs://b/d")
    assert str(caught.value) == (
        "data.data_dir 'gs://b/d' has no prepared 'digits', which can only be written "
        "locally: python -m data.prepare digits --data_dir LOCAL_DIR, then copy "
        "LOCAL_DIR/digits into it"
    )
    assert list(tmp_path.iterdir()) == []
