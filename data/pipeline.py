"""grain input pipelines: what the trainer and the evaluators iterate over.

Datasets (`config.data.dataset`):
- `digits`: the embedded 8x8 digits (data/digits.py), prepared on first use, no TensorFlow;
- any TFDS name prepared in array_record format (`mnist`, `cifar10`, `celeb_a`, ...), see
  data/sources.py; `celeb_a` is centre-cropped (140x140) and resized to `image_size`;
- `toy_<name>` for the 2-D distributions of data/toy.py (`toy_gmm`, `toy_moons`,
  `toy_swiss_roll`, `toy_checkerboard`): `num_toy_samples` training points (default
  100,000) and `num_toy_test_samples` test points (default 10,000), fixed across runs.

Batches are dicts of numpy arrays: `image` float32 (B, H, W, C) (toy: (B, 2)), `label` int32
(B,) (zeros when the dataset has no labels); eval batches add `mask` bool (B,).
Image values: uint8 / 255, or (uint8 + U[0, 1)) / 256 with `uniform_dequantization`; then
mapped to [-1, 1] if `centered`. `random_flip` flips horizontally with p = 0.5 (train only).
Toy points are served as sampled: the image options do not apply to them.

The training stream is defined globally and independently of the number of processes: the
training split in a fresh seed-derived order each epoch, epochs concatenated, cut into
consecutive global batches of `global_batch_size` (so every batch is full and none is dropped;
a batch may straddle two epochs). Process `p` of `P` gets rows [p*B/P, (p+1)*B/P) of each
global batch, and reads and decodes only those. Augmentation randomness is keyed by the
position in the global stream. Hence 1 process and P processes see exactly the same global
batches, and the iterator state (the global step) is valid for any process count.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np

from data import sources, toy
from data.sources import DataError, DatasetNotPreparedError

__all__ = [
    "DataError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "TrainIterator",
    "get_info",
    "make_eval_iterator",
    "make_train_iterator",
]

TOY_PREFIX = "toy_"
DEFAULT_NUM_TOY_SAMPLES = 100_000
DEFAULT_NUM_TOY_TEST_SAMPLES = 10_000

# One background thread prefetching a few batches: decoding overlaps the train step, while
# leaving the (few, shared) cores to the step itself.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What a configured dataset looks like once served.

    `shape` is one example's `image` shape after pre-processing, e.g. (8, 8, 1) or (2,);
    `num_classes` is 0 for unlabelled data (labels are then all zero).
    """

    name: str
    shape: tuple[int, ...]
    num_classes: int
    num_train: int
    num_test: int

    @property
    def is_image(self) -> bool:
        """True for (H, W, C) images, False for 2-D toy points."""
        return len(self.shape) == 3


@dataclasses.dataclass(frozen=True)
class _Options:
    dataset: str
    image_size: int | None
    num_channels: int | None
    centered: bool
    random_flip: bool
    uniform_dequantization: bool
    data_dir: str | None
    num_toy_samples: int
    num_toy_test_samples: int


def _options(data_config: Mapping[str, Any]) -> _Options:
    get = data_config.get
    return _Options(
        dataset=str(data_config["dataset"]),
        image_size=get("image_size"),
        num_channels=get("num_channels"),
        centered=bool(get("centered", False)),
        random_flip=bool(get("random_flip", False)),
        uniform_dequantization=bool(get("uniform_dequantization", False)),
        data_dir=get("data_dir"),
        num_toy_samples=int(get("num_toy_samples", DEFAULT_NUM_TOY_SAMPLES)),
        num_toy_test_samples=int(get("num_toy_test_samples", DEFAULT_NUM_TOY_TEST_SAMPLES)),
    )


@dataclasses.dataclass(frozen=True)
class _Split:
    """One split, ready for grain: `records[i]` -> `decode` -> {'image', 'label'}.

    For images the decoded `image` is uint8 (H, W, C) at the served size; for toy data it is
    already the float32 (2,) point.
    """

    info: DatasetInfo
    records: Sequence[Any]
    decode: Callable[[Any], dict[str, Any]]


def _toy_split(opts: _Options, split: str, read: bool) -> _Split:
    name = opts.dataset.removeprefix(TOY_PREFIX)
    if name not in toy.SAMPLERS:
        raise DataError(
            f"unknown toy dataset {opts.dataset!r}; known: "
            + ", ".join(TOY_PREFIX + key for key in toy.SAMPLERS)
        )
    sizes = {"train": opts.num_toy_samples, "test": opts.num_toy_test_samples}
    if split not in sizes:
        raise DataError(f"dataset {opts.dataset!r} has splits ['test', 'train'], not {split!r}")
    info = DatasetInfo(opts.dataset, (2,), 0, sizes["train"], sizes["test"])
    points = toy.load(name, split, sizes[split]) if read else np.zeros((0, 2), np.float32)
    return _Split(info, points, lambda point: {"image": point, "label": 0})


def _image_split(opts: _Options, split: str, read: bool) -> _Split:
    src = sources.open_image_source(opts.dataset, split, opts.data_dir, read=read)
    height, width, channels = src.image_shape
    if opts.num_channels != channels:
        raise DataError(
            f"config.data.num_channels={opts.num_channels} but dataset {opts.dataset!r} "
            f"has {channels} channel(s)"
        )
    # Look up the bare name: 'celeb_a:2.1.0' is celeb_a too.
    crop = sources.CENTER_CROP.get(opts.dataset.split(":")[0].split("/")[0])
    size = opts.image_size
    if crop is None and (size, size) != (height, width):
        raise DataError(
            f"config.data.image_size={size} but dataset {opts.dataset!r} has "
            f"{height}x{width} images"
        )
    if crop is not None and (not isinstance(size, int) or size < 1):
        raise DataError(f"config.data.image_size must be a positive int, got {size!r}")
    label_key = src.label_key

    def decode(record: dict[str, Any]) -> dict[str, Any]:
        image = record["image"]
        if crop is not None:
            image = sources.center_crop_resize(image, crop, size)
        return {"image": image, "label": record[label_key] if label_key else 0}

    info = DatasetInfo(
        name=opts.dataset,
        shape=(size, size, channels),
        num_classes=src.num_classes,
        num_train=src.split_sizes.get("train", 0),
        num_test=src.split_sizes.get("test", 0),
    )
    return _Split(info, src.records, decode)


def _open(
    data_config: Mapping[str, Any], split: str, *, read: bool = True
) -> tuple[_Options, _Split]:
    """Options and split; with `read=False` only the metadata (empty `records`)."""
    opts = _options(data_config)
    if opts.dataset.startswith(TOY_PREFIX):
        return opts, _toy_split(opts, split, read)
    return opts, _image_split(opts, split, read)


def get_info(data_config: Mapping[str, Any]) -> DatasetInfo:
    """Describes the configured dataset (preparing `digits` if needed).

    Raises DataError (a ValueError) if the config does not fit the data, and
    DatasetNotPreparedError (also a ValueError) if a standard dataset is not prepared.
    """
    return _open(data_config, "train", read=False)[1].info


def read_split(
    data_config: Mapping[str, Any], split: str, *, limit: int | None = None
) -> dict[str, np.ndarray]:
    """The stored examples of `split` in order, untransformed: {'image', 'label'}.

    Images come back as uint8 (N, H, W, C) at the served size (no flip, no dequantization,
    no centring): what evaluation compares samples with. Toy data comes back as float32
    points (N, 2). `limit` reads only the first examples.
    """
    _, data = _open(data_config, split)
    count = len(data.records) if limit is None else min(limit, len(data.records))
    examples = [data.decode(data.records[i]) for i in range(count)]
    dtype = np.uint8 if data.info.is_image else np.float32
    if not examples:
        return {
            "image": np.zeros((0, *data.info.shape), dtype),
            "label": np.zeros((0,), np.int32),
        }
    return {
        "image": np.stack([np.asarray(e["image"], dtype) for e in examples]),
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


def _transform(
    opts: _Options, is_image: bool, *, flip: bool
) -> Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]:
    """The per-example float conversion (+ augmentation), as a grain random map."""

    def apply(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        label = np.int32(element["label"])
        if not is_image:
            return {"image": np.asarray(element["image"], np.float32), "label": label}
        image = element["image"]
        # Draw the flip coin unconditionally so that the dequantization noise of an
        # example does not depend on whether flipping is enabled.
        if rng.random() < 0.5 and flip:
            image = image[:, ::-1]
        if opts.uniform_dequantization:
            noise = rng.random(image.shape, dtype=np.float32)
            x = (image.astype(np.float32) + noise) / np.float32(256.0)
        else:
            x = image.astype(np.float32) / np.float32(255.0)
        if opts.centered:
            x = np.float32(2.0) * x - np.float32(1.0)
        return {"image": x, "label": label}

    return apply


def _seeds(seed: int) -> tuple[int, int]:
    """Independent 32-bit seeds for the shuffle and the augmentation, from one seed."""
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    shuffle_seed, map_seed = np.random.SeedSequence(int(seed)).generate_state(2)
    return int(shuffle_seed), int(map_seed)


def _local_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
    if process_count < 1 or not 0 <= process_index < process_count:
        raise ValueError(f"bad process_index={process_index} for process_count={process_count}")
    if batch_size < 1 or batch_size % process_count:
        raise ValueError(
            f"global batch size {batch_size} must be a positive multiple of the process "
            f"count {process_count}"
        )
    return batch_size // process_count


class TrainIterator(grain.DatasetIterator):
    """Infinite, checkpointable iterator over the process-local training batches.

    `get_state()` is a JSON-serialisable dict: {"grain": {"next_index": <global step>},
    "pipeline": {...}} where "pipeline" names the dataset, seed and global batch size it
    belongs to; `set_state` refuses a state of another pipeline. The state does not depend on
    the process index or count. Being a `grain.DatasetIterator`, it also works with
    `grain.checkpoint.CheckpointSave/CheckpointRestore` in an orbax CheckpointManager.
    """

    def __init__(self, parent: grain.DatasetIterator, pipeline: dict[str, Any]):
        super().__init__(parent)
        self._pipeline = pipeline

    def __next__(self) -> dict[str, np.ndarray]:
        return next(self._parent)

    def get_state(self) -> dict[str, Any]:
        """The position in the stream plus the pipeline's identity (JSON-serialisable)."""
        return {"grain": self._parent.get_state(), "pipeline": dict(self._pipeline)}

    def set_state(self, state: dict[str, Any]) -> None:
        """Continues from `state` (from `get_state` of an iterator of the same pipeline)."""
        saved = state.get("pipeline") if isinstance(state, Mapping) else None
        if saved != self._pipeline:
            raise ValueError(
                f"data iterator state belongs to another pipeline: saved {saved}, "
                f"this one is {self._pipeline}"
            )
        self._parent.set_state(state["grain"])

    def __str__(self) -> str:
        return f"TrainIterator({self._pipeline})"


def make_train_iterator(
    data_config: Mapping[str, Any],
    *,
    global_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> TrainIterator:
    """Endless training batches: this process's rows of each global batch.

    Yields {'image': float32 (global_batch_size // process_count, *shape), 'label': int32}.
    Deterministic given `seed` (all processes must pass the same one). See the module
    docstring for the stream's definition and `TrainIterator` for checkpointing.
    """
    local = _local_batch_size(global_batch_size, process_index, process_count)
    shuffle_seed, map_seed = _seeds(seed)
    opts, split = _open(data_config, "train")
    ds = (
        grain.MapDataset.source(split.records)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .map(split.decode)
        # Mapped before slicing, so an example's augmentation depends on its position in
        # the global stream, not on which process reads it.
        .random_map(_transform(opts, split.info.is_image, flip=opts.random_flip), seed=map_seed)
        .batch(local, drop_remainder=True)
    )
    # Local batch q of the stream is rows [(q % P) * local, ...) of global batch q // P.
    ds = ds[process_index::process_count]
    parent = ds.to_iter_dataset(_READ_OPTIONS).__iter__()
    pipeline = {
        "dataset": split.info.name,
        "num_examples": len(split.records),
        "seed": int(seed),
        "global_batch_size": int(global_batch_size),
    }
    return TrainIterator(parent, pipeline)


def make_eval_iterator(
    data_config: Mapping[str, Any],
    *,
    batch_size: int,
    split: str = "test",
    process_index: int = 0,
    process_count: int = 1,
    seed: int = 0,
) -> grain.DatasetIterator:
    """One pass over `split` in its stored order, no augmentation, no example dropped.

    `batch_size` is global, like the training one: each process yields
    `batch_size // process_count` rows, and every process yields the same number of
    batches, ceil(num_examples / batch_size). Yields {'image', 'label', 'mask' bool (B,)};
    the last global batch is padded with zero images whose `mask` is False. Uniform
    dequantization, if configured, is applied with noise drawn from `seed`.
    """
    local = _local_batch_size(batch_size, process_index, process_count)
    opts, data = _open(data_config, split)
    records, decode = data.records, data.decode
    num_examples = len(records)
    total = math.ceil(num_examples / batch_size) * batch_size
    pad = {
        "image": np.zeros(data.info.shape, np.uint8 if data.info.is_image else np.float32),
        "label": 0,
    }

    def fetch(index: int) -> dict[str, Any]:
        if index < num_examples:
            return {**decode(records[index]), "mask": True}
        return {**pad, "mask": False}

    transform = _transform(opts, data.info.is_image, flip=False)

    def finish(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = transform(element, rng)
        out["mask"] = np.bool_(element["mask"])
        if not element["mask"]:
            out["image"] = np.zeros_like(out["image"])
        return out

    ds = (
        grain.MapDataset.range(total)
        .map(fetch)
        .random_map(finish, seed=_seeds(seed)[1])
        .batch(local, drop_remainder=True)
    )
    ds = ds[process_index::process_count]
    return ds.to_iter_dataset(_READ_OPTIONS).__iter__()
