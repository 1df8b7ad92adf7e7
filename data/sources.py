"""Random-access TFDS sources: the embedded `digits` and standard datasets (mnist, cifar10,
celeb_a, ...), read with `tfds.data_source` from array_record files. No TensorFlow needed.

`digits` is prepared on first use. Any other dataset must have been prepared beforehand
(which needs TensorFlow) with `python -m data.prepare NAME --data_dir DIR`; if it was not,
`DatasetNotPreparedError` says so in one line. TFDS is always called with `download=False`:
an implicit download inside a training job would need the network and TensorFlow, and would
fail half-way.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from data import digits, paths
from data.errors import DataError, DatasetNotPreparedError

__all__ = [
    "DataError",
    "DatasetNotPreparedError",
    "ImageSource",
    "center_crop_resize",
    "open_image_source",
    "resolve_data_dir",
]

PREPARE_HINT = (
    "pip install -r requirements-data.txt && python -m data.prepare {name} --data_dir {data_dir}"
)

# Splits whose decoded images fit in this many bytes are decoded once and kept in memory
# (digits: 92 KB, mnist: 47 MB, cifar10: 150 MB): decoding PNGs costs ~0.2 ms per example,
# far more than everything else the pipeline does, and would be repeated every epoch.
MAX_IN_MEMORY_BYTES = 256 * 2**20
_READ_CHUNK = 4096

# Datasets whose images are cropped to a centred square of this side and then resized to
# config.data.image_size (the usual CelebA pre-processing: 140x140 centre crop of 218x178).
# Every other dataset must already have config.data.image_size.
CENTER_CROP = {"celeb_a": 140}


def resolve_data_dir(data_dir: str | os.PathLike | None) -> epath.Path:
    """`data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (read at call time).

    An `etils.epath.Path`, so a bucket (gs://...) works like a local folder; a local path
    comes back absolute with `~` expanded. A bucket whose file system is not installed is a
    UserError naming the setting.
    """
    if data_dir:
        text, what = os.fspath(data_dir), "data.data_dir"
    elif os.environ.get("TFDS_DATA_DIR"):
        text, what = os.environ["TFDS_DATA_DIR"], "data.data_dir (from $TFDS_DATA_DIR)"
    else:
        text, what = "~/tensorflow_datasets", "data.data_dir"
    return paths.resolve(os.path.expanduser(text), what=what)


def _not_prepared(name: str, data_dir: str, problem: str, action: str) -> DatasetNotPreparedError:
    hint = PREPARE_HINT.format(name=name, data_dir=data_dir)
    return DatasetNotPreparedError(f"dataset {name!r} {problem}; {action}: {hint}")


@dataclasses.dataclass(frozen=True)
class ImageSource:
    """One split of an image dataset as served to the pipeline (before float conversion).

    `records[i]` is the TFDS example dict (decoded numpy), read from disk or from memory
    (`InMemoryRecords`, for small splits); `image_shape` and `label_key` describe it;
    `num_classes` is 0 when the dataset has no class label.
    """

    name: str
    split: str
    records: Sequence[dict[str, Any]]
    image_shape: tuple[int, int, int]
    label_key: str | None
    num_classes: int
    split_sizes: dict[str, int]


class InMemoryRecords(Sequence[dict[str, Any]]):
    """A split's decoded images (and labels) held as arrays; indexable like a data source."""

    def __init__(self, images: np.ndarray, labels: np.ndarray | None):
        self.images = images
        self.labels = labels

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        record = {"image": self.images[index]}
        if self.labels is not None:
            record["label"] = self.labels[index]
        return record


@functools.lru_cache(maxsize=8)
def _read_all(name: str, split: str, data_dir: str, with_labels: bool) -> InMemoryRecords:
    source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    images, labels = [], []
    for start in range(0, len(source), _READ_CHUNK):
        chunk = source.__getitems__(range(start, min(start + _READ_CHUNK, len(source))))
        images.extend(record["image"] for record in chunk)
        if with_labels:
            labels.extend(record["label"] for record in chunk)
    image_array = np.stack(images)
    image_array.setflags(write=False)  # cached and shared between iterators
    label_array = np.asarray(labels, np.int64) if with_labels else None
    if label_array is not None:
        label_array.setflags(write=False)
    return InMemoryRecords(image_array, label_array)


def _builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    """The prepared builder of `name` in `data_dir`; kept for the process once prepared, since
    opening one reads and parses its metadata files (about 0.2 s, at every family build)."""
    key = (name, data_dir)
    if key not in _PREPARED_BUILDERS:
        _PREPARED_BUILDERS[key] = _open_builder(name, data_dir)
    return _PREPARED_BUILDERS[key]


_PREPARED_BUILDERS: dict[tuple[str, str], tfds.core.DatasetBuilder] = {}


def _open_builder(name: str, data_dir: str) -> tfds.core.DatasetBuilder:
    if name == digits.NAME:
        digits.prepare(data_dir)
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise DataError(
            f"unknown dataset {name!r}: not 'digits', not 'synthetic', not 'photos', not a toy "
            f"dataset (toy_gmm, toy_moons, toy_swiss_roll, toy_checkerboard) and not a TFDS "
            f"dataset"
        ) from err
    except (ValueError, AssertionError) as err:  # malformed name, unknown config or version
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"cannot open dataset {name!r}: {first_line}") from err
    if not builder.is_prepared():
        raise _not_prepared(name, data_dir, f"is not prepared in {data_dir}", "prepare it with")
    return builder


def open_image_source(
    name: str, split: str, data_dir: str | os.PathLike | None, *, read: bool = True
) -> ImageSource:
    """Opens `split` of TFDS dataset `name` for random access.

    With `read=False` only the metadata is checked and `records` is empty (cheap: small
    splits are otherwise decoded into memory here). Raises DatasetNotPreparedError (a
    ValueError) if the dataset is not prepared in array_record format, DataError for an
    unknown name or split, or a dataset without a fixed-size `image`.
    """
    # A str from here on: `_read_all` caches by it, and the messages print it.
    data_dir = os.fspath(resolve_data_dir(data_dir))
    builder = _builder(name, data_dir)
    info = builder.info
    if info.file_format != tfds.core.FileFormat.ARRAY_RECORD:
        # Prepared, but e.g. in tfrecord (TFDS's default), which has no random access.
        raise _not_prepared(
            name,
            data_dir,
            f"is prepared in {builder.data_dir} as {info.file_format.value} instead of "
            "array_record (which grain needs for random access)",
            "delete that folder, then prepare it with",
        )
    split_sizes = {key: value.num_examples for key, value in info.splits.items()}
    if split not in split_sizes:
        raise DataError(f"dataset {name!r} has splits {sorted(split_sizes)}, not {split!r}")
    features = info.features
    if "image" not in features or len(features["image"].shape) != 3:
        raise DataError(f"dataset {name!r} has no 'image' feature of shape (H, W, C)")
    shape = tuple(features["image"].shape)
    if None in shape:
        raise DataError(f"dataset {name!r} has images of varying size {shape}; not supported")
    label = features["label"] if "label" in features else None
    num_classes = label.num_classes if isinstance(label, tfds.features.ClassLabel) else 0
    records: Sequence[dict[str, Any]] = ()
    if read and split_sizes[split] * int(np.prod(shape)) <= MAX_IN_MEMORY_BYTES:
        records = _read_all(name, split, data_dir, num_classes > 0)
    elif read:
        records = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    return ImageSource(
        name=name,
        split=split,
        records=records,
        image_shape=shape,
        label_key="label" if num_classes else None,
        num_classes=num_classes,
        split_sizes=split_sizes,
    )


def center_crop_resize(image: np.ndarray, crop: int, size: int) -> np.ndarray:
    """Centre crop to `crop` x `crop` (clipped to the image), then resize to `size` x `size`.

    uint8 in, uint8 out. PIL's bicubic resize filters over the whole footprint, so
    downscaling is antialiased.
    """
    height, width = image.shape[:2]
    crop_h, crop_w = min(crop, height), min(crop, width)
    top, left = (height - crop_h) // 2, (width - crop_w) // 2
    image = image[top : top + crop_h, left : left + crop_w]
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    channels = image.shape[2]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = np.asarray(pil.resize((size, size), Image.Resampling.BICUBIC))
    return resized.reshape(size, size, channels)
