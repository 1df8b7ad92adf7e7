"""Images for style transfer: by file path, or by name from the pictures that
scikit-image and scikit-learn ship (offline; listed and read by `data.photos`), as float32
RGB in [0, 1].

Size: ``size`` is the *shorter side* after resizing, the aspect ratio kept (a painting's
proportions are part of its style); ``square=True`` then centre-crops to ``size x size``.
Resizing is ``jax.image.resize``'s antialiased linear filter, which never overshoots
[0, 1]. Grey images are copied onto R, G and B and images with alpha are composited over
white; either way :func:`load_image` says so in the note it returns.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from data import photos
from errors import UserError

Array = jax.Array

MIN_SIZE = 32  # shorter side, in pixels: VGG-19 pools five times


def available_names() -> tuple[str, ...]:
    """The names :func:`load_image` knows, sorted (`data.photos`, the one list of them,
    which the `photos` dataset crops too)."""
    return photos.names()


def _named(name: str) -> np.ndarray:
    return photos.raw(name)  # a DataError (a UserError) without scikit-image


def _read_file(path: Path) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise UserError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode == "P":  # a palette: its transparency becomes an alpha channel
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            elif img.mode not in ("1", "L", "LA", "I", "I;16", "F", "RGB", "RGBA"):
                img = img.convert("RGB")  # CMYK, YCbCr, LAB, HSV
            return np.array(img)
    except Exception as err:  # PIL's UnidentifiedImageError, truncated or corrupt data
        message = " ".join(f"{type(err).__name__}: {err}".split())
        raise UserError(f"image file {path}: cannot read it as an image ({message})") from None


def _unit_range(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.bool_:
        return pixels.astype(np.float32)
    if pixels.dtype == np.uint8:
        return pixels.astype(np.float32) / 255.0
    if np.issubdtype(pixels.dtype, np.integer):  # 16-bit PNG/TIFF (PIL gives I;16 or I)
        return np.clip(pixels.astype(np.float32) / 65535.0, 0.0, 1.0)
    return np.clip(pixels.astype(np.float32), 0.0, 1.0)  # float images are taken as [0, 1]


def to_rgb(pixels: np.ndarray, label: str = "the image") -> tuple[np.ndarray, str]:
    """(H, W), (H, W, 1|2|3|4) pixels of any dtype -> float32 (H, W, 3) in [0, 1] and a
    note on what was converted ('' if nothing)."""
    x = _unit_range(np.asarray(pixels))
    if x.ndim == 2:
        x = x[..., None]
    if x.ndim != 3 or x.shape[-1] not in (1, 2, 3, 4):
        raise UserError(f"{label} has shape {pixels.shape}, not an image (H, W[, C])")
    notes = []
    if x.shape[-1] in (2, 4):
        alpha = x[..., -1:]
        x = x[..., :-1] * alpha + (1.0 - alpha)  # over white: a transparent page is white
        notes.append("its alpha channel was composited over white")
    if x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
        notes.append("it is greyscale, copied onto R, G and B")
    note = f"{label}: {' and '.join(notes)}" if notes else ""
    return np.ascontiguousarray(x, np.float32), note


def resize_shorter(image: Array | np.ndarray, size: int, *, square: bool = False) -> Array:
    """(H, W, C) or (N, H, W, C) float image resized so that its shorter side is ``size``
    (aspect ratio kept, the longer side rounded); ``square`` centre-crops to size x size."""
    image = jnp.asarray(image, jnp.float32)
    h, w = image.shape[-3:-1]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    if (new_h, new_w) != (h, w):
        shape = (*image.shape[:-3], new_h, new_w, image.shape[-1])
        image = jax.image.resize(image, shape, method="linear", antialias=True)
    if square:
        top, left = (new_h - size) // 2, (new_w - size) // 2
        image = image[..., top : top + size, left : left + size, :]
    return image


def load_image(
    source: str | os.PathLike,
    size: int | None = None,
    *,
    square: bool = False,
    min_size: int = MIN_SIZE,
) -> tuple[np.ndarray, str]:
    """An image by name (:func:`available_names`) or file path, as float32 (H, W, 3) RGB
    in [0, 1], and a one-line note on any conversion ('' if none).

    ``size``: the shorter side after resizing (None keeps the image's own size); ``square``
    then centre-crops. An image whose shorter side is under ``min_size`` pixels, a missing
    or unreadable file and an unknown name raise a one-line :class:`UserError`.
    """
    text = os.fspath(source)
    is_path = isinstance(source, os.PathLike) or os.sep in text or Path(text).suffix != ""
    if text in available_names() and not is_path:
        pixels, label = _named(text), text
    elif is_path or Path(text).exists():
        pixels, label = _read_file(Path(text)), Path(text).name
    else:
        raise UserError(
            f"unknown image {text!r} (not a name, and no such file); names: "
            f"{', '.join(available_names())}"
        )
    rgb, note = to_rgb(pixels, label)
    h, w = rgb.shape[:2]
    if min(h, w) < min_size:
        raise UserError(
            f"image {label} is {w}x{h} pixels: its shorter side is under the minimum {min_size}"
        )
    if size is not None:
        if size < min_size:
            raise UserError(f"image size {size} is under the minimum {min_size}")
        rgb = np.asarray(resize_shorter(rgb, size, square=square))
    elif square:
        rgb = np.asarray(resize_shorter(rgb, min(h, w), square=True))
    return rgb, note
