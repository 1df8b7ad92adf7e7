"""Captions for the digit datasets: short English prompts that name an image's digit.

A text-conditioned model trains on (image, caption) pairs where the caption is drawn from the
`train` templates; the `heldout` templates use wording that no training caption contains (each
has at least one word absent from every train template), so evaluating on them measures how far
the model generalises to unseen phrasings rather than memorising the training strings.

A template fills `{digit}` with the numeral ("7") and `{word}` with the English word
("seven"). The bank of a split holds every caption of every class, class-major:
row = digit * len(templates(split)) + template_index, so `digit_of_row(row) == row // T`.
The pipeline serves a training caption as its row in `bank("train")` (`config.data.captions`).

Captions exist for the datasets whose 10 classes are the digits 0-9 (`DATASETS`).
Pure python/numpy: no model, no TensorFlow.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from data.errors import DataError

SPLITS = ("train", "heldout")
DATASETS = ("digits", "mnist")
NUM_CLASSES = 10

_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")

# No template puts "a" right before a placeholder, so that "an eight" / "an 8" never comes out
# as "a eight"; and none names any other number, so every caption names exactly one digit.
_TEMPLATES: dict[str, tuple[str, ...]] = {
    "train": (
        "{digit}",
        "{word}",
        "a handwritten {digit}",
        "a handwritten {word}",
        "the digit {digit}",
        "the digit {word}",
        "number {digit} written by hand",
        "an image of the number {word}",
        "a drawing of the digit {digit}",
        "the handwritten number {word}",
        "a photo of the number {digit}",
        "the number {word}, handwritten",
    ),
    # Words new to these (never in a train template): picture, someone, wrote, numeral,
    # scan, with, pen, sketch.
    "heldout": (
        "a picture of a handwritten {word}",
        "someone wrote the digit {digit}",
        "the numeral {word}",
        "a scan of the number {digit}",
        "{digit}, written with a pen",
        "a sketch of the number {word}",
    ),
}


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"unknown caption split {split!r}; the splits are {SPLITS}")


def _check_digit(digit: Any) -> int:
    if isinstance(digit, bool) or not isinstance(digit, int | np.integer):
        raise ValueError(f"digit must be an int in 0..{NUM_CLASSES - 1}, got {digit!r}")
    if not 0 <= digit < NUM_CLASSES:
        raise ValueError(f"digit must be in 0..{NUM_CLASSES - 1}, got {digit}")
    return int(digit)


def templates(split: str) -> tuple[str, ...]:
    """The caption templates of `split` ('train' or 'heldout'), in bank order."""
    _check_split(split)
    return _TEMPLATES[split]


def caption(digit: int, template: str) -> str:
    """`template` with `{digit}` -> the numeral ("7") and `{word}` -> the word ("seven")."""
    digit = _check_digit(digit)
    return template.format(digit=str(digit), word=_WORDS[digit])


@functools.cache
def bank(split: str = "train") -> tuple[str, ...]:
    """Every caption of `split`, class-major: row = digit * len(templates(split)) + index."""
    return tuple(caption(d, t) for d in range(NUM_CLASSES) for t in templates(split))


def digit_of_row(row: Any, split: str = "train") -> Any:
    """The digit that row `row` of `bank(split)` names: an int, or an int32 array of the
    shape of `row` for an array of rows."""
    size = len(bank(split))
    rows = np.asarray(row)
    if rows.dtype == np.bool_ or not np.issubdtype(rows.dtype, np.integer):
        raise ValueError(f"caption rows must be integers, got {row!r}")
    if rows.size and (rows.min() < 0 or rows.max() >= size):
        raise ValueError(f"caption rows must be in 0..{size - 1} for split {split!r}")
    digits = rows // len(templates(split))
    return int(digits) if digits.ndim == 0 else digits.astype(np.int32)


def prompts_for(digit: int, split: str) -> tuple[str, ...]:
    """The captions of `split` that name `digit`, in template order."""
    digit = _check_digit(digit)
    count = len(templates(split))
    return bank(split)[digit * count : (digit + 1) * count]


def check_dataset(dataset: str) -> None:
    """Raises DataError (one line) unless `dataset` is one whose classes are the digits."""
    # The bare name: 'mnist:3.0.1' is mnist too.
    if str(dataset).split(":")[0].split("/")[0] not in DATASETS:
        names = ", ".join(repr(name) for name in DATASETS)
        raise DataError(
            f"data.captions: captions exist for the digit datasets ({names}), not {dataset!r}"
        )
