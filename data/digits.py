"""The embedded `digits` dataset: scikit-learn's 8x8 handwritten digits as a TFDS dataset.

scikit-learn ships 1,797 greyscale 8x8 digit images (values 0..16) inside its wheel, so this
dataset needs neither the network nor TensorFlow. We store it as a regular TFDS dataset in
array_record format, so it is read through `tfds.data_source` exactly like mnist or cifar10.

Features: `image` uint8 (8, 8, 1), value round(v * 255 / 16); `label` ClassLabel(10).
Splits (stratified by label, `train_test_split(test_size=0.2, random_state=0)`):
`train` 1,437 examples, `test` 360 examples (35-37 of each class).

How it is written without TensorFlow: `tfds.features.Image` only needs TensorFlow to
*encode* numpy arrays (it calls `tf.image.encode_png`); it takes already-encoded PNG bytes
as they are. So the generator below encodes with PIL, and the stock
`GeneratorBasedBuilder.download_and_prepare(file_format='array_record')` writes the shards,
`dataset_info.json` and `features.json` without importing TensorFlow.

Atomicity: the builder writes into a private temporary data_dir next to the real one, and
the finished version folder is moved into place with one `os.rename`. A crash leaves only a
`.digits-prepare-*` folder (cleaned up by a later prepare), never a half-written dataset;
when two processes race, the first rename wins and the loser discards its copy.
"""

from __future__ import annotations

import functools
import io
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from errors import UserError

NAME = "digits"
DATASET_VERSION = "1.0.0"
NUM_CLASSES = 10
IMAGE_SHAPE = (8, 8, 1)
TEST_FRACTION = 0.2
SPLIT_SEED = 0
SPLIT_SIZES = {"train": 1437, "test": 360}

_TMP_PREFIX = f".{NAME}-prepare-"
# A prepare takes about a second; a temp folder this old belongs to a process that died.
_STALE_TMP_SECONDS = 3600.0


@functools.cache
def _arrays() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """(uint8 images (N, 8, 8, 1), labels (N,), {split: sorted row indices})."""
    from sklearn.datasets import load_digits  # slow import: only needed to prepare
    from sklearn.model_selection import train_test_split

    raw = load_digits()
    train, test = train_test_split(
        np.arange(len(raw.target)),
        test_size=TEST_FRACTION,
        random_state=SPLIT_SEED,
        stratify=raw.target,
    )
    images = to_uint8(raw.images)[..., None]
    return images, raw.target.astype(np.int64), {"train": np.sort(train), "test": np.sort(test)}


def to_uint8(images: np.ndarray) -> np.ndarray:
    """Maps scikit-learn's digit intensities 0..16 to uint8 0..255 (round(v * 255 / 16))."""
    return np.round(np.asarray(images, np.float64) * (255.0 / 16.0)).astype(np.uint8)


def _png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image[..., 0], mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits, split 1,437 train / 360 test (stratified, seed 0)."""

    name = NAME
    VERSION = tfds.core.Version(DATASET_VERSION)
    RELEASE_NOTES: ClassVar[dict[str, str]] = {
        DATASET_VERSION: "sklearn load_digits, stratified 80/20 split (seed 0)."
    }

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup of this path touches `importlib_resources`, which is not
        # installed (TFDS only requires it on Python < 3.9); this module is the answer.
        return epath.Path(__file__)

    def _info(self) -> tfds.core.DatasetInfo:
        # Built directly rather than with `dataset_info_from_configs`, which looks for
        # metadata files in a package folder that this single-module builder does not have.
        return tfds.core.DatasetInfo(
            builder=self,
            description=(
                "Optical recognition of handwritten digits (UCI), as shipped with "
                "scikit-learn: 8x8 greyscale images, intensities 0..16 scaled to 0..255."
            ),
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=IMAGE_SHAPE, dtype=np.uint8),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://archive.ics.uci.edu/dataset/80",
        )

    def _split_generators(self, dl_manager: Any) -> dict[str, Iterator]:
        del dl_manager  # nothing to download: the data ships inside scikit-learn
        return {split: self._generate_examples(split) for split in SPLIT_SIZES}

    def _generate_examples(self, split: str) -> Iterator[tuple[int, dict[str, Any]]]:
        images, labels, splits = _arrays()
        for index in splits[split]:
            # The sklearn row number is a stable, unique key (TFDS shuffles by key hash).
            yield int(index), {"image": _png(images[index]), "label": int(labels[index])}


def version_dir(data_dir: str | os.PathLike) -> epath.Path:
    """The folder that holds the prepared dataset: `<data_dir>/digits/<DATASET_VERSION>`."""
    return epath.Path(data_dir) / NAME / DATASET_VERSION


def is_prepared(data_dir: str | os.PathLike) -> bool:
    """Whether `data_dir` (local or a bucket) holds a complete prepared copy (the rename makes
    it all-or-nothing)."""
    return (version_dir(data_dir) / "dataset_info.json").is_file()


def _remove_stale_tmp_dirs(data_dir: Path) -> None:
    now = time.time()
    for path in data_dir.glob(f"{_TMP_PREFIX}*"):
        try:
            if now - path.stat().st_mtime > _STALE_TMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except OSError:
            pass  # another process removed it first


def prepare(data_dir: str | os.PathLike) -> epath.Path:
    """Writes the dataset into `data_dir` unless it is already there; returns its folder.

    Needs no network and no TensorFlow. Safe to call from several processes at once.
    Writing needs a local (POSIX) `data_dir`, as atomicity relies on `os.rename`; a bucket
    is read from if a prepared copy was put there, and is otherwise refused (UserError).
    """
    if "://" in os.fspath(data_dir):
        if is_prepared(data_dir):
            return version_dir(data_dir)
        raise UserError(
            f"data.data_dir {os.fspath(data_dir)!r} has no prepared {NAME!r}, which can only "
            f"be written locally: python -m data.prepare {NAME} --data_dir LOCAL_DIR, then "
            f"copy LOCAL_DIR/{NAME} into it"
        )
    data_dir = Path(data_dir).expanduser()
    target = Path(version_dir(data_dir))
    if is_prepared(data_dir):
        return version_dir(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    _remove_stale_tmp_dirs(data_dir)
    # The temp folder lives inside data_dir so that the final rename stays on one filesystem.
    tmp_root = Path(tempfile.mkdtemp(prefix=_TMP_PREFIX, dir=data_dir))
    try:
        builder = Digits(data_dir=os.fspath(tmp_root), file_format="array_record")
        builder.download_and_prepare(download_dir=os.fspath(tmp_root / "downloads"))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.rename(os.fspath(version_dir(tmp_root)), target)
        except OSError:
            # Lost the race: another process renamed a complete copy into place first.
            if not is_prepared(data_dir):
                raise OSError(
                    f"cannot prepare {NAME!r}: {target} exists but is not a complete "
                    "prepared dataset (no dataset_info.json); delete it and try again"
                ) from None
    finally:
        shutil.rmtree(tmp_root, ignore_errors=True)
    return version_dir(data_dir)
