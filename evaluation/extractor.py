"""The interface every feature network exposes to the metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

import progress


@dataclasses.dataclass(frozen=True)
class FeatureExtractor:
    """A frozen feature network: uint8 images in, (features, logits) out.

    `settings` records everything that changes the numbers (input size, resize filter,
    training recipe) so that a metrics report can state it next to each figure;
    `checksum` is the sha256 of the weights file the network was loaded from.
    """

    name: str
    checksum: str
    feature_dim: int
    num_classes: int
    settings: Mapping[str, Any]
    # uint8 (B, H, W, C) -> (float32 (B, feature_dim), float32 (B, num_classes)).
    apply_batch: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    batch_size: int = 256

    def __call__(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Features and logits of uint8 images (N, H, W, C), in batches of `batch_size`.

        The last batch is padded to full size so that one compiled program serves all.
        """
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"{self.name}: expected uint8 images (N, H, W, C), got {images.dtype} "
                f"{images.shape}"
            )
        features, logits = [], []
        starts = range(0, len(images), self.batch_size)
        for start in progress.bar(starts, desc=f"{self.name} features"):
            chunk = images[start : start + self.batch_size]
            n = len(chunk)
            if n < self.batch_size:
                pad = np.zeros((self.batch_size - n, *chunk.shape[1:]), np.uint8)
                chunk = np.concatenate([chunk, pad])
            f, z = self.apply_batch(chunk)
            features.append(np.asarray(f)[:n])
            logits.append(np.asarray(z)[:n])
        if not features:
            return (
                np.zeros((0, self.feature_dim), np.float32),
                np.zeros((0, self.num_classes), np.float32),
            )
        return np.concatenate(features), np.concatenate(logits)
