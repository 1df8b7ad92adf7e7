"""The `synthetic` dataset: random uint8 images with labels, generated on demand.

For measuring and debugging at scale without a download or a preparation step: any
`image_size` and `num_channels`, `NUM_CLASSES` classes, a `train` split of
`config.data.num_synthetic_samples` examples (default `DEFAULT_NUM_TRAIN`, CIFAR-10's size)
and a `test` split a fifth as large.

Example `i` of a split is a pure function of (split, i, shape): its own generator, seeded by
the split's fixed seed and `i`, draws the label and then the pixels (uniform over 0..255).
Nothing is held in memory, so the dataset costs nothing however large, and every process
and every run sees the same examples. The records look like decoded TFDS records
(`{'image': uint8 (H, W, C), 'label': int64}`), so the grain pipeline serves them exactly as
it serves digits or cifar10: centring, flips and dequantization apply unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NAME = "synthetic"
NUM_CLASSES = 10
DEFAULT_NUM_TRAIN = 50_000
# test size = max(1, train size // TEST_DIVISOR): 50,000 / 10,000 like CIFAR-10.
TEST_DIVISOR = 5
# Fixed data seeds: the dataset is the same in every run; the training seed only decides the
# order it is visited in.
SPLIT_SEEDS = {"train": 0, "test": 1}


def split_sizes(num_train: int) -> dict[str, int]:
    """{'train': num_train, 'test': max(1, num_train // TEST_DIVISOR)}."""
    return {"train": num_train, "test": max(1, num_train // TEST_DIVISOR)}


class SyntheticRecords(Sequence[dict[str, Any]]):
    """One split as a random-access source: `records[i]` is generated when asked for.

    Indexable and sized like a `tfds.data_source`, and picklable (a few ints), so grain can
    hand it to worker threads or processes.
    """

    def __init__(self, split: str, num_examples: int, image_shape: tuple[int, int, int]):
        if split not in SPLIT_SEEDS:
            raise ValueError(f"dataset {NAME!r} has splits {sorted(SPLIT_SEEDS)}, not {split!r}")
        if num_examples < 0:
            raise ValueError(f"num_examples must be >= 0, got {num_examples}")
        self.split = split
        self.num_examples = int(num_examples)
        self.image_shape = tuple(int(d) for d in image_shape)

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
        label = rng.integers(NUM_CLASSES, dtype=np.int64)
        image = rng.integers(0, 256, size=self.image_shape, dtype=np.uint8)
        return {"image": image, "label": label}

    def __repr__(self) -> str:
        return (f"SyntheticRecords(split={self.split!r}, num_examples={self.num_examples}, "
                f"image_shape={self.image_shape})")
