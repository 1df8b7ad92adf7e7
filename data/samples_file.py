"""The samples file: an .npz as sample.py writes it (`save_samples`) and evaluate.py and
the discriminator family read it (`load_samples`), checked so that a wrong key, dtype,
value range or shape is one line naming the problem. In data/ because both training/
and evaluation/ read it."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from errors import UserError


@dataclasses.dataclass(frozen=True)
class Samples:
    """uint8 images (N, H, W, C) or float points (N, 2), optional requested class labels,
    and how they were drawn."""

    images: np.ndarray
    labels: np.ndarray | None
    provenance: Mapping[str, Any]


def load_samples(path: str | os.PathLike, image_shape: tuple[int, ...], *,
                 num_classes: int = 0) -> Samples:
    """Reads and checks an .npz of samples: `images` (uint8, or float in [0, 1]) of
    `image_shape`, or for 2-D toy data (`image_shape` (2,)) float `points` (N, 2), as
    sample.py writes them.

    Optional arrays: `labels` (int, one per image: the classes asked of a conditional
    model; in [0, num_classes) where `num_classes` is given) and the provenance sample.py
    records (`sampler`, `nfe`, `seed`, `step`).
    """
    path = Path(path)
    arrays = read_npz(path, "an .npz of samples as sample.py writes it")
    if tuple(image_shape) == (2,):
        images = _checked_points(path, arrays)
    else:
        images = _checked_images(path, arrays, tuple(image_shape))
    labels = arrays.get("labels")
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (len(images),):
            raise UserError(
                f"{path}: labels must be integers of shape ({len(images)},), got "
                f"{labels.dtype} {labels.shape}"
            )
        # A label no class has would count as a miss and quietly lower the accuracy.
        if num_classes and (labels.min() < 0 or labels.max() >= num_classes):
            raise UserError(
                f"{path}: labels must lie in [0, {num_classes}) (the data's classes), got "
                f"values in [{labels.min()}, {labels.max()}]"
            )
    provenance = {
        key: arrays[key].item() for key in ("sampler", "nfe", "seed", "step") if key in arrays
    }
    return Samples(images, labels, provenance)


def read_npz(path: Path, expected: str) -> dict[str, np.ndarray]:
    """Every array of the .npz `path`; UserError (one line, naming `expected`) for a file
    that is not one or is damaged."""
    check_is_npz(path)
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError) as err:
        raise UserError(f"{path} is a damaged .npz file ({' '.join(str(err).split())[:200]}); "
                        f"expected {expected}") from err


# The first bytes of files a user may pass instead of an .npz (a zip archive).
_MAGIC = ((b"PK\x03\x04", None), (b"PK\x05\x06", "is an empty zip archive"),
          (b"\x93NUMPY", "is a single .npy array"), (b"\x89PNG", "is a PNG image"),
          (b"\xff\xd8\xff", "is a JPEG image"), (b"\x80", "is a Python pickle"))


def check_is_npz(path: str | os.PathLike) -> None:
    """UserError saying what the file is if it is plainly not an .npz (empty, a PNG, text,
    a pickle), before numpy would read it as a pickle and talk of unsafe loading."""
    if not Path(path).is_file():
        raise UserError(f"samples file not found: {path}")
    kind = _not_npz(Path(path))
    if kind:
        raise UserError(f"{path} {kind}; expected an .npz of samples as sample.py writes it "
                        "(a zip of arrays such as 'images')")


def _not_npz(path: Path) -> str | None:
    """What the file is, if it is plainly not an .npz ('is a PNG image'); None if it may
    be one. numpy would read anything else as a pickle and name unsafe loading instead."""
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError as err:
        return f"cannot be read ({err.strerror or err})"
    if not head:
        return "is empty (0 bytes)"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "is not an .npz file (not a zip archive)"
    return "is a text file"


def _checked_images(path: Path, arrays: Mapping[str, np.ndarray],
                    image_shape: tuple[int, ...]) -> np.ndarray:
    if "images" not in arrays:
        raise UserError(f"{path} has no 'images' array (keys: {sorted(arrays)})")
    images = arrays["images"]
    if images.ndim != 4 or tuple(images.shape[1:]) != image_shape:
        raise UserError(
            f"{path}: images have shape {images.shape}, expected (N, "
            f"{', '.join(map(str, image_shape))}) for this config's data"
        )
    if len(images) == 0:
        raise UserError(f"{path} holds no images")
    if np.issubdtype(images.dtype, np.floating):
        if not np.isfinite(images).all() or images.min() < 0.0 or images.max() > 1.0:
            raise UserError(
                f"{path}: float images must lie in [0, 1], got values in "
                f"[{np.nanmin(images):.3g}, {np.nanmax(images):.3g}]"
            )
        return np.round(images * 255.0).astype(np.uint8)
    if images.dtype != np.uint8:
        raise UserError(f"{path}: images must be uint8 (or float in [0, 1]), got {images.dtype}")
    return images


def _checked_points(path: Path, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    if "points" not in arrays:
        raise UserError(f"{path} has no 'points' array, which 2-D toy data needs (keys: "
                        f"{sorted(arrays)})")
    points = arrays["points"]
    if points.ndim != 2 or points.shape[1] != 2 or len(points) == 0:
        raise UserError(f"{path}: points have shape {points.shape}, expected (N, 2) with N > 0")
    if not np.issubdtype(points.dtype, np.floating):
        raise UserError(f"{path}: points must be floats, got {points.dtype}")
    if not np.isfinite(points).all():
        raise UserError(f"{path}: {int(np.sum(~np.isfinite(points).all(axis=1)))} points are "
                        "not finite")
    return points.astype(np.float32)


def save_samples(path: str | os.PathLike, samples: np.ndarray, record: Mapping[str, Any]
                 ) -> None:
    """Writes `samples` (uint8 images (N, H, W, C), or float points (N, 2)) and `record`
    (numpy values: provenance, labels) to the .npz `path` as load_samples reads it,
    atomically: through a temporary file beside it, renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    key = "points" if np.ndim(samples) == 2 else "images"
    np.savez_compressed(tmp, **{key: samples}, **record)
    tmp.replace(path)
