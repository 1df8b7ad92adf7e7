"""Image grids and PNG/NPZ output shared by training snapshots and sample.py."""

import io
import math
import os

import numpy as np
from etils import epath
from PIL import Image


def to_uint8(images01: np.ndarray) -> np.ndarray:
    """[0, 1] floats -> uint8, rounding to the nearest level."""
    return np.clip(np.rint(np.asarray(images01, np.float32) * 255.0), 0, 255).astype(np.uint8)


def make_grid(images: np.ndarray, ncol: int | None = None, pad: int = 1,
              min_size: int = 256) -> np.ndarray:
    """Tiles uint8 (N, H, W, C) images into one (H', W', C) picture.

    Small images (8x8 digits) are enlarged by an integer nearest-neighbour factor so
    that the grid is at least `min_size` pixels wide and stays pixel-exact.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"expected images of shape (N, H, W, C), got {images.shape}")
    n, h, w, c = images.shape
    ncol = ncol or math.ceil(math.sqrt(n))
    nrow = math.ceil(n / ncol)
    scale = max(1, math.ceil(min_size / (ncol * (w + pad))))
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    h, w = h * scale, w * scale
    grid = np.full((nrow * (h + pad) + pad, ncol * (w + pad) + pad, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, ncol)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        grid[top : top + h, left : left + w] = img
    return grid


def samples_picture(samples: np.ndarray, num_groups: int = 1) -> np.ndarray:
    """sample.py's picture: a density picture of 2-D points, or a grid of up to 100 images;
    images drawn for `num_groups` prompts (or classes) in turn get one row per group."""
    if samples.ndim == 2:
        return points_picture(samples)
    per_group = len(samples) // num_groups
    if num_groups == 1 or per_group == 0:
        return make_grid(samples[:100])
    per_group = min(per_group, max(1, 100 // num_groups))
    cycles = samples[:per_group * num_groups].reshape(per_group, num_groups,
                                                      *samples.shape[1:])
    rows = cycles.swapaxes(0, 1).reshape(-1, *samples.shape[1:])
    return make_grid(rows, ncol=per_group)


def points_picture(points: np.ndarray, size: int = 256, extent: float = 4.0) -> np.ndarray:
    """A (size, size, 1) uint8 density picture of 2-D points in [-extent, extent]^2.

    Dark where points are dense (log-scaled counts), y up; what a scatter plot would show,
    without a plotting library.
    """
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise ValueError(f"expected points of shape (N, 2), got {points.shape}")
    counts, _, _ = np.histogram2d(points[:, 1], points[:, 0], bins=size,
                                  range=[[-extent, extent], [-extent, extent]])
    shade = np.log1p(counts[::-1]) / max(np.log1p(counts.max()), 1e-9)
    return (255 - np.rint(shade * 255)).astype(np.uint8)[..., None]


def save_png(path: str | os.PathLike, picture: np.ndarray) -> None:
    """Writes an (H, W, 1|3) uint8 picture atomically (temp file, then rename).

    `path` may be local or in a bucket (`gs://...`, through `etils.epath`).
    """
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture = picture[..., 0] if picture.shape[-1] == 1 else picture
    encoded = io.BytesIO()  # PIL wants a seekable file; a bucket's file object may not be
    Image.fromarray(picture).save(encoded, format="PNG")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(encoded.getvalue())
    tmp.replace(path)
