"""Input images for image-conditioned sampling (inpainting, colorization, SDEdit): 8-bit
files read as uint8 and checked against the model's image shape, with one-line UserErrors.
No jax here: sample.py checks its inputs before it loads anything heavy."""

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from errors import UserError


def read_image(path: str | Path, *, what: str = "image") -> np.ndarray:
    """An 8-bit image file (PNG, ...) as uint8 (H, W, C), C = 1 (gray) or 3 (RGB).

    A palette image becomes RGB; an alpha channel is dropped if fully opaque, else refused.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "1":
                img = img.convert("L")
            elif img.mode == "P":
                img = img.convert("RGBA")
            mode = img.mode
            pixels = np.asarray(img)
    except (OSError, UnidentifiedImageError, ValueError) as err:
        raise UserError(f"{what} {path} is not a readable image: {err}") from err
    if mode not in ("L", "LA", "RGB", "RGBA") or pixels.dtype != np.uint8:
        raise UserError(f"{what} {path} must be an 8-bit gray or RGB image, got mode {mode}")
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    if mode in ("LA", "RGBA"):
        if (pixels[..., -1] != 255).any():
            raise UserError(f"{what} {path} has transparent pixels; save it without alpha")
        pixels = pixels[..., :-1]
    return np.ascontiguousarray(pixels)


def _describe(shape: tuple) -> str:
    h, w, c = shape
    return f"{w}x{h} with {c} channel{'s' if c != 1 else ''}"


def load_image(path: str | Path, expected: tuple[int, int, int], *, centered: bool,
               what: str = "image") -> tuple[np.ndarray, np.ndarray]:
    """(uint8 pixels (H, W, C), the same in the model's data space: [0, 1], or [-1, 1] if
    `centered`); UserError unless the image is `expected` (H, W, C)."""
    pixels = read_image(path, what=what)
    if pixels.shape != tuple(expected):
        raise UserError(f"{what} {path} is {_describe(pixels.shape)}; expected "
                        f"{_describe(tuple(expected))}")
    x = pixels.astype(np.float32) / np.float32(255.0)
    return pixels, (2.0 * x - 1.0 if centered else x)


def load_mask(path: str | Path, image_shape: tuple[int, int, int], *,
              what: str = "mask") -> np.ndarray:
    """A mask image as float32 (H, W, 1 or C): 1 where the pixel is known (>= 128), 0 where
    it is to be filled; UserError unless it covers the image."""
    pixels = read_image(path, what=what)
    h, w, c = image_shape
    if pixels.shape[:2] != (h, w) or pixels.shape[2] not in (1, c):
        raise UserError(f"{what} {path} is {_describe(pixels.shape)}; it must match the image: "
                        f"{w}x{h} with 1{f' or {c}' if c != 1 else ''} channel(s)")
    return (pixels >= 128).astype(np.float32)


def load_inputs(data, task: str, image_path: str | None, mask_path: str | None):
    """(image, mask, record) for `task` with `data` (a config's `data`): the input picture
    (colorize: gray) and inpainting mask in data space (None where the task has none), and
    what a samples file records of them."""
    if task == "sample":
        return None, None, {}
    shape = (data.image_size, data.image_size, data.num_channels)
    expected = (*shape[:2], 1) if task == "colorize" else shape
    pixels, image = load_image(image_path, expected, centered=data.centered, what="--image")
    record = {"input_path": np.str_(image_path), "input_image": pixels}
    mask = None
    if task == "inpaint":
        mask = load_mask(mask_path, shape, what="--mask")
        record.update(mask_path=np.str_(mask_path), input_mask=mask.astype(np.uint8))
    return image, mask, record
