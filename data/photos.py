"""The photographs that ship inside scikit-image and scikit-learn (offline), and the `photos`
dataset: pairs of random crops of them, a content crop and a style crop, for feed-forward
style transfer (`model.family='style_adain'`).

This module is the one list of those photographs: `style.images` loads them by name
through `raw`.

Example `i` of a split is a pure function of (split, i, the photo lists, the crop size), like
the `synthetic` dataset's: its own generator, seeded by the split's fixed seed and `i`, picks
a content photo of `data.content_photos` and a style photo of `data.style_photos` (uniformly,
each independently), and in each a random square (side between a quarter of the photo's
shorter side, or the crop size if larger, and the whole shorter side; anywhere in the photo)
which is resized to `data.image_size` (PIL's bilinear filter, antialiased when it shrinks).
Records are `{'image': uint8 (S, S, 3) content, 'style': uint8 (S, S, 3), 'label': 0}`; the
pipeline serves `style` as it serves `image` (scaling, centring, flips, dequantization), so
the iterator's state, the order and the augmentation are those of every other dataset. The
photos are read once per process (0.2 s for all of them) and kept in memory; a record holds
only a few ints and names, so it pickles for grain's workers.

The train split has `data.num_synthetic_samples` pairs and the test split a fifth as many,
both over the same photos with other crops (seeds 0 and 1): the photos are too few to hold
some out.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from data.errors import DataError

NAME = "photos"
# skimage.data's pictures that ship inside the wheel (the others are downloaded on first
# use, which an offline machine cannot do). Binary 'horse' and 102-px 'microaneurysms'
# are left out; 'cat' is 'chelsea' again.
SKIMAGE_NAMES = (
    "astronaut", "brick", "camera", "chelsea", "clock", "coffee", "coins", "colorwheel",
    "grass", "gravel", "hubble_deep_field", "immunohistochemistry", "logo", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip
SKLEARN_NAMES = ("china", "flower")  # sklearn.datasets.load_sample_images
SPLIT_SEEDS = {"train": 0, "test": 1}
TEST_DIVISOR = 5  # test size = max(1, train size // TEST_DIVISOR), as the synthetic data's
# The smallest crop region, as a fraction of the photo's shorter side.
MIN_REGION_FRACTION = 0.25


def names() -> tuple[str, ...]:
    """Every photo's name, sorted."""
    return tuple(sorted(SKIMAGE_NAMES + SKLEARN_NAMES))


def raw(name: str) -> np.ndarray:
    """The photo `name` as it ships: (H, W) or (H, W, 3|4), uint8. DataError (a UserError)
    for an unknown name, or scikit-image missing for one of its photos."""
    if name in SKLEARN_NAMES:
        from sklearn.datasets import load_sample_image

        return load_sample_image(f"{name}.jpg")
    if name not in SKIMAGE_NAMES:
        raise DataError(f"unknown photo {name!r}; the photos are {', '.join(names())}")
    try:
        from skimage import data
    except ImportError:
        raise DataError(
            f"image {name!r} comes with scikit-image, which is not installed "
            "(pip install scikit-image)"
        ) from None
    return getattr(data, name)()


@functools.cache
def rgb(name: str) -> np.ndarray:
    """The photo `name` as uint8 (H, W, 3) RGB: grey copied onto R, G and B, an alpha
    channel composited over white. Read once per process; do not modify the array."""
    pixels = np.asarray(raw(name))
    if pixels.dtype == np.bool_:
        pixels = pixels.astype(np.uint8) * 255
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if pixels.shape[-1] in (2, 4):
        alpha = pixels[..., -1:].astype(np.float32) / 255.0
        over_white = pixels[..., :-1].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        pixels = np.rint(over_white).astype(np.uint8)
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    pixels = np.ascontiguousarray(pixels, np.uint8)
    pixels.flags.writeable = False
    return pixels


@functools.cache
def _pil(name: str) -> Image.Image:
    return Image.fromarray(rgb(name))


def parse_names(value: Any, key: str) -> tuple[str, ...]:
    """A comma-separated list of photo names (`config.data.<key>`; '' = every photo) as a
    tuple; DataError for an unknown name or an empty list."""
    if not isinstance(value, str):
        raise DataError(f"config.data.{key} must be a comma-separated string of photo names, "
                        f"got {value!r}")
    chosen = tuple(part.strip() for part in value.split(",") if part.strip())
    if not value.strip():
        return names()
    unknown = [name for name in chosen if name not in names()]
    if unknown:
        raise DataError(f"config.data.{key}: unknown photo {unknown[0]!r}; the photos are "
                        f"{', '.join(names())}")
    if not chosen:
        raise DataError(f"config.data.{key} names no photo")
    return chosen


def split_sizes(num_train: int) -> dict[str, int]:
    """{'train': num_train, 'test': max(1, num_train // TEST_DIVISOR)}."""
    return {"train": num_train, "test": max(1, num_train // TEST_DIVISOR)}


def random_crop(rng: np.random.Generator, name: str, size: int) -> np.ndarray:
    """A random square of photo `name` (side between max(size, shorter / 4), capped at the
    shorter side, and the shorter side; anywhere) resized to uint8 (size, size, 3)."""
    photo = _pil(name)
    width, height = photo.size
    shorter = min(height, width)
    low = min(shorter, max(size, int(np.ceil(shorter * MIN_REGION_FRACTION))))
    side = int(rng.integers(low, shorter + 1))
    top = int(rng.integers(0, height - side + 1))
    left = int(rng.integers(0, width - side + 1))
    box = (left, top, left + side, top + side)
    # reducing_gap: a box reduction first, then the filter (PIL: no visible difference
    # from 3 on), three times as fast for large regions.
    return np.asarray(photo.resize((size, size), Image.Resampling.BILINEAR, box=box,
                                   reducing_gap=3.0))


class PairRecords(Sequence[dict[str, Any]]):
    """One split as a random-access source: `records[i]` (a content crop, a style crop)
    is generated when asked for (see the module docstring)."""

    def __init__(self, split: str, num_examples: int, size: int,
                 content: Sequence[str], style: Sequence[str]):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"dataset {NAME!r} has splits {sorted(SPLIT_SEEDS)}, not {split!r}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        self.split = split
        self.num_examples = int(num_examples)
        self.size = int(size)
        self.content = tuple(content)
        self.style = tuple(style)

    def __len__(self) -> int:
        return self.num_examples

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        index = int(index)
        if index < 0:
            index += self.num_examples
        if not 0 <= index < self.num_examples:
            # IndexError (not ValueError) ends iteration, as for any Sequence.
            raise IndexError(f"index {index} out of range for {self.num_examples} examples")
        rng = np.random.default_rng((SPLIT_SEEDS[self.split], index))
        content = self.content[int(rng.integers(len(self.content)))]
        style = self.style[int(rng.integers(len(self.style)))]
        return {"image": random_crop(rng, content, self.size),
                "style": random_crop(rng, style, self.size),
                "label": np.int64(0)}

    def __repr__(self) -> str:
        return (f"PairRecords(split={self.split!r}, num_examples={self.num_examples}, "
                f"size={self.size}, content={self.content}, style={self.style})")
