"""data/: embedded digits (TFDS, no TensorFlow), standard-dataset errors, toy data, grain
loaders (transforms, checkpointable state, process sharding, padded eval)."""

from __future__ import annotations

import collections
import json
import os
import shutil
import socket
import sys
import threading
from pathlib import Path

import grain
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data import digits, pipeline, prepare, sources, toy
from tests.batches import assert_batches_equal

BATCH = 64


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TFDS data dir with digits prepared, with the network cut off while preparing."""
    path = tmp_path_factory.mktemp("tfds")
    assert not any(path.iterdir())

    def no_network(*args, **kwargs):
        raise OSError("network access during digits preparation")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket.socket, "connect", no_network)
        digits.prepare(path)
    return path


def make_config(data_dir: Path | None = None, **overrides) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(
        {
            "dataset": "digits",
            "image_size": 8,
            "num_channels": 1,
            "centered": False,
            "random_flip": False,
            "uniform_dequantization": False,
            "data_dir": os.fspath(data_dir) if data_dir else None,
        }
    )
    config.update(overrides)
    return config


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def test_digits_prepared_offline_and_read_by_tfds(data_dir):
    assert "tensorflow" not in sys.modules
    version_dir = data_dir / "digits" / digits.DATASET_VERSION
    names = sorted(p.name for p in version_dir.iterdir())
    assert "dataset_info.json" in names and "features.json" in names
    assert any(name.startswith("digits-train.array_record") for name in names)
    assert sorted(p.name for p in data_dir.iterdir()) == ["digits"]  # no temp dirs left

    source = tfds.data_source("digits", data_dir=os.fspath(data_dir), download=False)
    assert {split: len(records) for split, records in source.items()} == {
        "train": 1437,
        "test": 360,
    }
    for split in ("train", "test"):
        records = source[split].__getitems__(range(len(source[split])))
        images = np.stack([r["image"] for r in records])
        labels = np.array([r["label"] for r in records])
        assert images.dtype == np.uint8 and images.shape[1:] == (8, 8, 1)
        assert images.max() == 255 and images.min() == 0
        # round(v * 255 / 16) for v in 0..16 is the only set of values that may occur.
        assert set(np.unique(images)) <= set(digits.to_uint8(np.arange(17)).tolist())
        counts = np.bincount(labels, minlength=10)
        assert len(counts) == 10 and counts.min() >= (35 if split == "test" else 139)


def test_prepare_again_is_a_noop(data_dir):
    files = sorted((data_dir / "digits").rglob("*"))
    stamps = [f.stat().st_mtime_ns for f in files]
    assert digits.prepare(data_dir) == data_dir / "digits" / digits.DATASET_VERSION
    assert prepare.main(["digits", "--data_dir", os.fspath(data_dir)]) == 0
    assert sorted((data_dir / "digits").rglob("*")) == files
    assert [f.stat().st_mtime_ns for f in files] == stamps


def test_prepare_crash_leaves_nothing(tmp_path, monkeypatch):
    def broken(self, split):
        yield 0, {"image": digits._png(np.zeros((8, 8, 1), np.uint8)), "label": 0}
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(digits.Digits, "_generate_examples", broken)
    with pytest.raises(RuntimeError, match="simulated crash"):
        digits.prepare(tmp_path)
    assert not digits.is_prepared(tmp_path)
    assert [p.name for p in tmp_path.rglob("*") if "prepare" in p.name] == []
    assert not (tmp_path / "digits" / digits.DATASET_VERSION).exists()


def test_concurrent_prepare(tmp_path, data_dir):
    errors = []

    def run():
        try:
            digits.prepare(tmp_path)
        except Exception as err:  # the test reports it below
            errors.append(err)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]
    # Independent preparations store the same records in the same order (hosts that
    # prepare their own copy read identical streams).
    for split in ("train", "test"):
        ours, reference = (
            tfds.data_source("digits", split=split, data_dir=os.fspath(d), download=False)
            for d in (tmp_path, data_dir)
        )
        assert len(ours) == len(reference) == digits.SPLIT_SIZES[split]
        for a, b in zip(
            ours.__getitems__(range(len(ours))),
            reference.__getitems__(range(len(reference))),
            strict=True,
        ):
            assert a["label"] == b["label"] and np.array_equal(a["image"], b["image"])


@pytest.mark.parametrize("centered", [False, True])
def test_train_batches(data_dir, centered):
    config = make_config(data_dir, centered=centered)
    info = pipeline.get_info(config)
    assert info == pipeline.DatasetInfo("digits", (8, 8, 1), 10, 1437, 360)
    batch = next(pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=0))
    assert set(batch) == {"image", "label"}
    image, label = batch["image"], batch["label"]
    assert image.dtype == np.float32 and image.shape == (BATCH, 8, 8, 1)
    assert label.dtype == np.int32 and label.shape == (BATCH,)
    assert 0 <= label.min() and label.max() <= 9
    low = -1.0 if centered else 0.0
    assert image.min() == low and image.max() == 1.0
    levels = (image - low) / (1.0 - low) * 255.0
    np.testing.assert_allclose(levels, np.round(levels), atol=1e-4)


def test_uniform_dequantization(data_dir):
    plain = next(
        pipeline.make_train_iterator(make_config(data_dir), global_batch_size=BATCH, seed=3)
    )
    config = make_config(data_dir, uniform_dequantization=True)
    noisy = next(pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=3))
    x = noisy["image"]
    assert 0.0 <= x.min() and x.max() < 1.0
    off_grid = np.abs(x * 255 - np.round(x * 255)) > 1e-3
    assert off_grid.mean() > 0.9
    # Same seed, same examples: the noise stays within the example's own uint8 bin.
    np.testing.assert_array_equal(np.floor(x * 256), np.round(plain["image"] * 255))
    np.testing.assert_array_equal(noisy["label"], plain["label"])


def test_random_flip_flips_about_half(data_dir):
    plain_it = pipeline.make_train_iterator(make_config(data_dir), global_batch_size=128, seed=5)
    flip_config = make_config(data_dir, random_flip=True)
    flip_it = pipeline.make_train_iterator(flip_config, global_batch_size=128, seed=5)
    plain = np.concatenate([b["image"] for b in take(plain_it, 4)])
    flipped = np.concatenate([b["image"] for b in take(flip_it, 4)])
    mirrored = plain[:, :, ::-1]
    same = np.all(flipped == plain, axis=(1, 2, 3))
    mirror = np.all(flipped == mirrored, axis=(1, 2, 3))
    assert np.all(same | mirror)
    asymmetric = ~np.all(plain == mirrored, axis=(1, 2, 3))
    fraction = mirror[asymmetric].mean()
    assert 0.35 < fraction < 0.65, fraction


def test_iterator_state_round_trip(data_dir, tmp_path):
    config = make_config(data_dir, random_flip=True, uniform_dequantization=True, centered=True)
    it = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=7)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))
    assert state["grain"] == {"next_index": 3}
    # 30 more batches of 64 cross the end of the first epoch (1437 examples).
    expected = take(it, 30)

    restored = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=7)
    restored.set_state(state)
    assert_batches_equal(take(restored, 30), expected)

    # Through grain's orbax handler, as the trainer's CheckpointManager would do it.
    handler = grain.checkpoint.CheckpointHandler()
    handler.save(tmp_path, item=it)
    expected = take(it, 2)
    again = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=7)
    handler.restore(tmp_path, item=again)
    assert_batches_equal(take(again, 2), expected)

    other = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=8)
    with pytest.raises(ValueError, match="another pipeline"):
        other.set_state(state)


def test_epochs_are_reshuffled_permutations():
    config = make_config(dataset="toy_gmm", num_toy_samples=256)
    it = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=0)
    first = np.concatenate([b["image"] for b in take(it, 4)])
    second = np.concatenate([b["image"] for b in take(it, 4)])
    points = toy.load("gmm", "train", 256)
    for epoch in (first, second):
        np.testing.assert_array_equal(np.unique(epoch, axis=0), np.unique(points, axis=0))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("dataset", ["digits", "toy_moons"])
def test_process_shares_make_the_global_batch(data_dir, dataset):
    config = make_config(data_dir, dataset=dataset, random_flip=True, num_toy_samples=96)
    whole = pipeline.make_train_iterator(config, global_batch_size=32, seed=1)
    shares = [
        pipeline.make_train_iterator(
            config, global_batch_size=32, seed=1, process_index=p, process_count=2
        )
        for p in range(2)
    ]
    for _ in range(4):
        parts = [next(share) for share in shares]
        assert all(part["image"].shape[0] == 16 for part in parts)
        joined = {k: np.concatenate([part[k] for part in parts]) for k in parts[0]}
        assert_batches_equal([joined], [next(whole)])
    # The state is the global step, whatever the process count.
    assert shares[0].get_state() == shares[1].get_state() == whole.get_state()
    if dataset.startswith("toy_"):  # unique points: the shares of one epoch are disjoint
        fresh = [
            pipeline.make_train_iterator(
                config, global_batch_size=32, seed=1, process_index=p, process_count=2
            )
            for p in range(2)
        ]
        rows = np.concatenate([next(it)["image"] for it in fresh for _ in range(3)])
        assert len(np.unique(rows, axis=0)) == len(rows) == 96


def test_batch_size_must_divide_over_processes(data_dir):
    with pytest.raises(ValueError, match=r"global batch size 30 .* process count 4"):
        pipeline.make_train_iterator(
            make_config(data_dir), global_batch_size=30, seed=0, process_count=4
        )
    with pytest.raises(ValueError, match="process count 4"):
        pipeline.make_eval_iterator(make_config(data_dir), batch_size=30, process_count=4)


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_covers_every_example_once(data_dir, process_count):
    config = make_config(data_dir, random_flip=True)  # flip must not apply to eval
    seen = collections.Counter()
    for p in range(process_count):
        batches = list(
            pipeline.make_eval_iterator(
                config, batch_size=BATCH, process_index=p, process_count=process_count
            )
        )
        assert len(batches) == 6  # ceil(360 / 64), the same on every process
        for batch in batches:
            assert batch["image"].shape == (BATCH // process_count, 8, 8, 1)
            assert batch["mask"].dtype == np.bool_
            assert np.all(batch["image"][~batch["mask"]] == 0)
            for image, label in zip(
                batch["image"][batch["mask"]], batch["label"][batch["mask"]], strict=True
            ):
                seen[(np.round(image * 255).astype(np.uint8).tobytes(), int(label))] += 1
    source = tfds.data_source("digits", split="test", data_dir=os.fspath(data_dir), download=False)
    expected = collections.Counter(
        (r["image"].tobytes(), int(r["label"])) for r in source.__getitems__(range(360))
    )
    assert seen == expected


def test_unprepared_standard_dataset_says_how_to_prepare(tmp_path):
    config = make_config(tmp_path, dataset="mnist", image_size=28)
    with pytest.raises(pipeline.DatasetNotPreparedError) as caught:
        pipeline.get_info(config)
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert "\n" not in message
    assert "'mnist'" in message and os.fspath(tmp_path) in message
    assert f"python -m data.prepare mnist --data_dir {tmp_path}" in message
    assert "requirements-data.txt" in message
    with pytest.raises(pipeline.DatasetNotPreparedError):
        pipeline.make_train_iterator(config, global_batch_size=8, seed=0)
    assert list(tmp_path.iterdir()) == []  # nothing was downloaded or half-written


def test_dataset_prepared_as_tfrecord_says_how_to_fix(data_dir, tmp_path):
    shutil.copytree(data_dir / "digits", tmp_path / "digits")
    info_path = tmp_path / "digits" / digits.DATASET_VERSION / "dataset_info.json"
    info = json.loads(info_path.read_text())
    info["fileFormat"] = "tfrecord"
    info_path.write_text(json.dumps(info))
    with pytest.raises(pipeline.DatasetNotPreparedError, match="instead of array_record"):
        pipeline.get_info(make_config(tmp_path))


def test_prepare_cli_without_tensorflow(tmp_path, capsys):
    if "tensorflow" in sys.modules or prepare.importlib.util.find_spec("tensorflow"):
        pytest.skip("TensorFlow is installed: the CLI would really download mnist")
    assert prepare.main(["mnist", "--data_dir", os.fspath(tmp_path)]) == 1
    assert "requirements-data.txt" in capsys.readouterr().err


@pytest.mark.parametrize("dataset", ["no_such_dataset", "toy_no_such"])
def test_unknown_dataset(tmp_path, dataset):
    with pytest.raises(ValueError, match=dataset):
        pipeline.get_info(make_config(tmp_path, dataset=dataset))


def test_config_must_match_the_data(data_dir):
    with pytest.raises(
        ValueError, match=r"config.data.image_size=32 but dataset 'digits' has 8x8 images"
    ):
        pipeline.get_info(make_config(data_dir, image_size=32))
    with pytest.raises(ValueError, match=r"num_channels=3 but dataset 'digits' has 1 channel"):
        pipeline.make_train_iterator(
            make_config(data_dir, num_channels=3), global_batch_size=8, seed=0
        )


def test_center_crop_resize():
    image = np.zeros((218, 178, 3), np.uint8)
    image[39:179, 19:159] = 200  # exactly the central 140x140 square
    out = sources.center_crop_resize(image, 140, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    assert np.all(out == 200)
    grey = sources.center_crop_resize(np.full((50, 40, 1), 7, np.uint8), 140, 16)
    assert grey.shape == (16, 16, 1) and np.all(grey == 7)


@pytest.mark.parametrize("name", sorted(toy.SAMPLERS))
def test_toy_samplers_and_loader(name):
    sampler = toy.SAMPLERS[name]
    points = sampler(np.random.default_rng(0), 1000)
    assert points.shape == (1000, 2) and points.dtype == np.float32
    assert np.all(np.isfinite(points)) and np.abs(points).max() < 6
    np.testing.assert_array_equal(points, sampler(np.random.default_rng(0), 1000))
    assert not np.array_equal(points, sampler(np.random.default_rng(1), 1000))

    config = make_config(dataset=f"toy_{name}", num_toy_samples=500, num_toy_test_samples=70)
    assert pipeline.get_info(config) == pipeline.DatasetInfo(f"toy_{name}", (2,), 0, 500, 70)
    batch = next(pipeline.make_train_iterator(config, global_batch_size=32, seed=0))
    assert batch["image"].shape == (32, 2) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and not batch["label"].any()
    evals = list(pipeline.make_eval_iterator(config, batch_size=32))
    assert len(evals) == 3 and sum(int(b["mask"].sum()) for b in evals) == 70


def grid(limit: float, step: float) -> tuple[np.ndarray, float]:
    axis = np.arange(-limit, limit, step) + step / 2
    xx, yy = np.meshgrid(axis, axis, indexing="ij")
    return np.stack([xx, yy], axis=-1), step * step


@pytest.mark.parametrize(("scale", "noise_std"), [(1.0, 0.0), (0.6, 0.8)])
def test_gmm_log_prob_is_the_sampled_density(scale, noise_std):
    points, area = grid(6.0, 0.02)
    log_p = toy.gmm_log_prob(points, scale=scale, noise_std=noise_std)
    p = np.exp(log_p)
    assert abs(p.sum() * area - 1.0) < 1e-3
    # E_samples[log p] estimates the same number as the grid integral of p log p.
    rng = np.random.default_rng(0)
    n = 50_000
    x = scale * toy.gmm(rng, n) + noise_std * rng.standard_normal((n, 2))
    log_p_samples = toy.gmm_log_prob(x, scale=scale, noise_std=noise_std)
    expected = (p * log_p).sum() * area
    tolerance = 4 * log_p_samples.std() / np.sqrt(n)
    assert abs(log_p_samples.mean() - expected) < tolerance


def test_checkerboard_log_prob():
    points, area = grid(3.0, 0.01)
    assert abs(np.exp(toy.checkerboard_log_prob(points)).sum() * area - 1.0) < 1e-6
    samples = toy.checkerboard(np.random.default_rng(0), 10_000)
    np.testing.assert_allclose(toy.checkerboard_log_prob(samples), -np.log(8.0))
