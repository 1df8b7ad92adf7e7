"""Images for style transfer: the bundled names load offline, files of every mode become
float RGB in [0, 1] with a note on what was converted, and the one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from errors import UserError
from style import images


def _message(*args, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        images.load_image(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_available_names():
    names = images.available_names()
    assert {"astronaut", "coffee", "chelsea", "rocket", "brick", "grass", "gravel"} <= set(names)
    assert {"camera", "china", "flower"} <= set(names)
    assert list(names) == sorted(names)


@pytest.mark.parametrize("name", ["astronaut", "china", "gravel"])
def test_names_load_offline_square(name):
    rgb, note = images.load_image(name, 48, square=True)
    assert rgb.shape == (48, 48, 3) and rgb.dtype == np.float32
    assert 0.0 <= rgb.min() and rgb.max() <= 1.0 and rgb.std() > 0.01
    assert (note == "") == (name != "gravel")
    if name == "gravel":
        assert note == "gravel: it is greyscale, copied onto R, G and B"
        np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_shorter_side_keeps_the_aspect_ratio():
    rgb, _ = images.load_image("rocket", 64)  # 427 x 640
    assert rgb.shape == (64, 96, 3)
    full, _ = images.load_image("rocket")  # no size: the pixels as shipped, scaled to [0, 1]
    from skimage import data

    np.testing.assert_allclose(full, data.rocket() / 255.0, atol=1e-6)


def test_files_of_other_modes(tmp_path):
    grey = np.tile(np.arange(64, dtype=np.uint8)[None] * 4, (40, 1))
    Image.fromarray(grey).save(tmp_path / "grey.png")
    rgb, note = images.load_image(tmp_path / "grey.png")
    assert rgb.shape == (40, 64, 3) and note == "grey.png: it is greyscale, copied onto R, G and B"
    np.testing.assert_allclose(rgb[0, :, 1], grey[0] / 255.0, atol=1e-6)

    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., 0] = 255  # red, half of it transparent
    rgba[:, :20, 3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    rgb, note = images.load_image(str(tmp_path / "rgba.png"))
    assert note == "rgba.png: its alpha channel was composited over white"
    np.testing.assert_allclose(rgb[0, 0], [1, 0, 0])
    np.testing.assert_allclose(rgb[0, -1], [1, 1, 1])

    converted, note = images.to_rgb(np.ones((34, 34, 2), np.uint8) * 255, "grey with alpha")
    assert converted.shape == (34, 34, 3) and "alpha" in note and "greyscale" in note


def test_logo_has_alpha():
    rgb, note = images.load_image("logo", 40)
    assert rgb.shape == (40, 40, 3) and note == "logo: its alpha channel was composited over white"


def test_unknown_name_lists_the_names():
    message = _message("mona_lisa")
    assert message.startswith("unknown image 'mona_lisa' (not a name, and no such file)")
    assert "astronaut, brick, camera" in message and "china" in message


def test_missing_and_unreadable_files(tmp_path):
    assert _message(tmp_path / "none.png") == f"image file not found: {tmp_path / 'none.png'}"
    assert _message("pictures/none.jpg") == "image file not found: pictures/none.jpg"
    (tmp_path / "bad.png").write_bytes(b"this is no png" * 10)
    message = _message(tmp_path / "bad.png")
    assert message.startswith(f"image file {tmp_path / 'bad.png'}: cannot read it as an image")


def test_too_small(tmp_path):
    Image.fromarray(np.zeros((20, 50, 3), np.uint8)).save(tmp_path / "tiny.png")
    message = _message(tmp_path / "tiny.png")
    assert message == "image tiny.png is 50x20 pixels: its shorter side is under the minimum 32"
    rgb, _ = images.load_image(tmp_path / "tiny.png", min_size=16)
    assert rgb.shape == (20, 50, 3)
    assert "image size 8 is under the minimum 32" in _message("astronaut", 8)
