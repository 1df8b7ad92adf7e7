"""grain input pipelines: what the trainer and the evaluators iterate over.

Datasets (`config.data.dataset`):
- `digits`: the embedded 8x8 digits (data/digits.py), prepared on first use, no TensorFlow;
- any TFDS name prepared in array_record format (`mnist`, `cifar10`, `celeb_a`, ...), see
  data/sources.py; `celeb_a` is centre-cropped (140x140) and resized to `image_size`;
- `toy_<name>` for the 2-D distributions of data/toy.py (`toy_gmm`, `toy_moons`,
  `toy_swiss_roll`, `toy_checkerboard`): `num_toy_samples` training points (default
  100,000) and `num_toy_test_samples` test points (default 10,000), fixed across runs;
- `synthetic`: random uint8 images of `image_size` x `num_channels` with 10 classes,
  generated per index (data/synthetic.py): `num_synthetic_samples` training images (default
  50,000) and a fifth as many test images, fixed across runs, no download or preparation;
- `photos`: pairs of random `image_size` crops (`image` a content crop, `style` a style
  crop) of the photos scikit-image and scikit-learn ship (data/photos.py), generated per
  index like `synthetic`; `content_photos` and `style_photos` name the photos ('' = all).
Which name opens what is data/datasets.py.

Batches are dicts of numpy arrays: `image` float32 (B, H, W, C) (toy: (B, 2)), `label` int32
(B,) (zeros when the dataset has no labels); eval batches add `mask` bool (B,). A dataset
whose examples carry further images (`DatasetInfo.extra_images`: `photos`' `style`) serves
each as `image` is served, its flip and noise drawn after the image's. With
`captions` (digit datasets only, data/captions.py), train and eval batches add `caption` int32
(B,): a row of `captions.bank("train")` naming the example's own label, its template drawn per
example after the augmentation's draws (so images are the same with captions on or off).
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

import math
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np

from data import captions as captions_lib
from data.datasets import TOY_PREFIX, DatasetInfo, Options, open_split
from data.errors import DataError, DatasetNotPreparedError

__all__ = [
    "TOY_PREFIX",
    "DataError",
    "DatasetInfo",
    "DatasetNotPreparedError",
    "TrainIterator",
    "get_info",
    "make_eval_iterator",
    "make_train_iterator",
]

# One background thread prefetching a few batches: decoding overlaps the train step, while
# leaving the (few, shared) cores to the step itself.
_READ_OPTIONS = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)


def get_info(data_config: Mapping[str, Any]) -> DatasetInfo:
    """Describes the configured dataset (preparing `digits` if needed).

    Raises DataError (a UserError, so a ValueError) if the config does not fit the data,
    and DatasetNotPreparedError (a DataError) if a standard dataset is not prepared.
    """
    return open_split(data_config, "train", read=False)[1].info


def read_split(
    data_config: Mapping[str, Any], split: str, *, limit: int | None = None
) -> dict[str, np.ndarray]:
    """The stored examples of `split` in order, untransformed: {'image', 'label'}.

    Images come back as uint8 (N, H, W, C) at the served size (no flip, no dequantization,
    no centring): what evaluation compares samples with; so do the dataset's extra images
    (`photos`: `style`). Toy data comes back as float32 points (N, 2). `limit` reads only
    the first examples.
    """
    _, data = open_split(data_config, split)
    count = len(data.records) if limit is None else min(limit, len(data.records))
    examples = [data.decode(data.records[i]) for i in range(count)]
    dtype = np.uint8 if data.info.is_image else np.float32
    keys = ("image", *data.info.extra_images)
    if not examples:
        return {
            **{key: np.zeros((0, *data.info.shape), dtype) for key in keys},
            "label": np.zeros((0,), np.int32),
        }
    return {
        **{key: np.stack([np.asarray(e[key], dtype) for e in examples]) for key in keys},
        "label": np.asarray([e["label"] for e in examples], np.int32),
    }


def _transform(
    opts: Options, is_image: bool, *, flip: bool, extra_images: tuple[str, ...] = ()
) -> Callable[[dict[str, Any], np.random.Generator], dict[str, Any]]:
    """The per-example float conversion (+ augmentation, + caption), as a grain random map;
    the `extra_images` keys are converted as `image` is, with draws after its own."""
    num_templates = len(captions_lib.templates("train"))

    def apply(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = convert(element, rng)
        if opts.captions:
            # Drawn last, so the flip and the noise above are those of captions=False.
            template = rng.integers(num_templates)
            out["caption"] = np.int32(out["label"] * num_templates + template)
        return out

    def convert(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        label = np.int32(element["label"])
        if not is_image:
            return {"image": np.asarray(element["image"], np.float32), "label": label}
        out = {"image": to_float(element["image"], rng), "label": label}
        for key in extra_images:
            out[key] = to_float(element[key], rng)
        return out

    def to_float(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
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
        return x

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

    Yields {'image': float32 (global_batch_size // process_count, *shape), 'label': int32},
    plus 'caption' int32 with `config.data.captions`.
    Deterministic given `seed` (all processes must pass the same one). See the module
    docstring for the stream's definition and `TrainIterator` for checkpointing.
    """
    local = _local_batch_size(global_batch_size, process_index, process_count)
    shuffle_seed, map_seed = _seeds(seed)
    opts, split = open_split(data_config, "train")
    ds = (
        grain.MapDataset.source(split.records)
        .shuffle(seed=shuffle_seed)
        .repeat()
        .map(split.decode)
        # Mapped before slicing, so an example's augmentation depends on its position in
        # the global stream, not on which process reads it.
        .random_map(_transform(opts, split.info.is_image, flip=opts.random_flip,
                               extra_images=split.info.extra_images), seed=map_seed)
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
    batches, ceil(num_examples / batch_size). Yields {'image', 'label', 'mask' bool (B,)}
    (+ 'caption' with `config.data.captions`, drawn from `seed`);
    the last global batch is padded with zero images whose `mask` is False. Uniform
    dequantization, if configured, is applied with noise drawn from `seed`.
    """
    local = _local_batch_size(batch_size, process_index, process_count)
    opts, data = open_split(data_config, split)
    records, decode = data.records, data.decode
    num_examples = len(records)
    total = math.ceil(num_examples / batch_size) * batch_size
    extra_images = data.info.extra_images
    pad = {
        key: np.zeros(data.info.shape, np.uint8 if data.info.is_image else np.float32)
        for key in ("image", *extra_images)
    }
    pad["label"] = 0

    def fetch(index: int) -> dict[str, Any]:
        if index < num_examples:
            return {**decode(records[index]), "mask": True}
        return {**pad, "mask": False}

    transform = _transform(opts, data.info.is_image, flip=False, extra_images=extra_images)

    def finish(element: dict[str, Any], rng: np.random.Generator) -> dict[str, Any]:
        out = transform(element, rng)
        out["mask"] = np.bool_(element["mask"])
        if not element["mask"]:
            for key in ("image", *extra_images):
                out[key] = np.zeros_like(out[key])
        return out

    ds = (
        grain.MapDataset.range(total)
        .map(fetch)
        .random_map(finish, seed=_seeds(seed)[1])
        .batch(local, drop_remainder=True)
    )
    ds = ds[process_index::process_count]
    return ds.to_iter_dataset(_READ_OPTIONS).__iter__()
