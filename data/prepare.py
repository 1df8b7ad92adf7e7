"""Prepare datasets for the training pipeline, in array_record format (random access).

    python -m data.prepare digits --data_dir DIR        # no TensorFlow needed
    pip install -r requirements-data.txt                # TensorFlow & co., for the rest
    python -m data.prepare cifar10 mnist --data_dir DIR [--manual_dir M]

`--data_dir` defaults to $TFDS_DATA_DIR, else ~/tensorflow_datasets. Standard datasets are
built by TFDS (`download_and_prepare(file_format='array_record')`), which downloads the raw
files: run this once, where there is network access, and point the runs at the same DIR.
Toy, synthetic and photos datasets are generated on the fly and need no preparation.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence

import tensorflow_datasets as tfds

from data import digits, photos, sources, synthetic
from data.datasets import TOY_PREFIX

# TFDS builders need TensorFlow to encode images; TFDS 4.9 also imports
# `importlib_resources` to locate its builders' code, without declaring it on Python >= 3.9.
_STANDARD_REQUIREMENTS = ("tensorflow", "importlib_resources")


def prepare(name: str, data_dir: str | None = None, manual_dir: str | None = None) -> str:
    """Prepares dataset `name` in `data_dir` (array_record) and returns a one-line report.

    Raises DataError (a ValueError) when it cannot: unknown name, missing requirements, or
    the dataset already prepared in another file format.
    """
    data_dir = os.fspath(sources.resolve_data_dir(data_dir))
    if name.startswith(TOY_PREFIX):
        return f"{name}: toy datasets are sampled on the fly; nothing to prepare"
    if name == synthetic.NAME:
        return f"{name}: synthetic images are generated on the fly; nothing to prepare"
    if name == photos.NAME:
        return (f"{name}: crops of the photos scikit-image and scikit-learn ship are cut on "
                "the fly; nothing to prepare")
    if name == digits.NAME:
        return f"{name}: ready in {digits.prepare(data_dir)}"
    missing = [m for m in _STANDARD_REQUIREMENTS if importlib.util.find_spec(m) is None]
    if missing:
        raise sources.DataError(
            f"preparing {name!r} needs {', '.join(missing)}: pip install -r requirements-data.txt"
        )
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as err:
        raise sources.DataError(f"unknown TFDS dataset {name!r}") from err
    if builder.is_prepared():
        file_format = builder.info.file_format
        if file_format != tfds.core.FileFormat.ARRAY_RECORD:
            raise sources.DataError(
                f"{name!r} is already prepared in {builder.data_dir} as {file_format}, which "
                "has no random access: delete that folder and run this again"
            )
        return f"{name}: already prepared in {builder.data_dir}"
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
    )
    return f"{name}: prepared in {builder.data_dir}"


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the process exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m data.prepare",
        description="Prepare datasets (array_record) for the grain training pipeline.",
    )
    parser.add_argument("names", nargs="+", help="dataset names, e.g. digits cifar10 celeb_a")
    parser.add_argument(
        "--data_dir",
        default=None,
        help="TFDS data dir (default: $TFDS_DATA_DIR, else ~/tensorflow_datasets)",
    )
    parser.add_argument(
        "--manual_dir", default=None, help="folder with manually downloaded raw files, if any"
    )
    args = parser.parse_args(argv)
    for name in args.names:
        try:
            print(prepare(name, args.data_dir, args.manual_dir))
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
