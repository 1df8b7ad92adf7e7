"""stylize.py, the style-transfer CLI: a PNG of the asked size from named photos or files,
the loss history, and one-line refusals that write nothing."""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import cli_zygote
from tests.cli_errors import error_line, flag_error_line

ROOT = Path(__file__).resolve().parents[1]


def _stylize(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # One CPU device, with the suite's cheap compilation settings.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": os.environ["XLA_FLAGS"].replace(
        "--xla_force_host_platform_device_count=8", "")}
    return cli_zygote.run("stylize.py", *args, cwd=cwd, env=env, timeout=300)


@pytest.fixture(scope="module")
def stylized(tmp_path_factory):
    """One small optimisation with the offline default network: chelsea in brick's style."""
    out_dir = tmp_path_factory.mktemp("stylize")
    proc = _stylize("--content", "chelsea", "--style", "brick", "--size", "48", "--steps", "20",
                    "--out", "cat.png", "--history", "cat.json", cwd=out_dir)
    assert proc.returncode == 0, proc.stderr
    return out_dir, proc


def test_writes_a_png_whose_shorter_side_is_the_size(stylized):
    out_dir, _ = stylized
    with Image.open(out_dir / "cat.png") as img:
        assert img.mode == "RGB"
        width, height = img.size
    assert min(width, height) == 48
    assert width > height  # chelsea is a landscape photo: the aspect ratio is kept


def test_history_records_a_falling_style_loss(stylized):
    out_dir, proc = stylized
    history = json.loads((out_dir / "cat.json").read_text())
    assert history[0]["step"] == 0 and history[-1]["step"] == 20
    assert history[-1]["style"] < history[0]["style"] / 2
    assert "style loss" in proc.stderr  # the summary line


def test_list_images_names_the_shipped_photos(tmp_path):
    proc = _stylize("--list_images", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    names = proc.stdout.split()
    assert {"chelsea", "astronaut", "coffee", "brick", "china", "flower"} <= set(names)


@pytest.mark.parametrize("args, status, expected", [
    (["--content", "chelsea"], 2, "--content and --style are both needed"),
    (["--content", "chelsea", "--style", "brick", "--out", "x.jpg"], 2, "must end in .png"),
    (["--content", "chelsea", "--style", "brick", "--features", "vgg19"], 2,
     "vgg19 needs a weights file"),
    (["--content", "chelsea", "--style", "brick", "--features", "resnet"], 2,
     "unknown feature network 'resnet'"),
    (["--content", "chelsea", "--style", "brick", "--style_layers", "conv9_9"], 2,
     "has no layer 'conv9_9'; its layers: conv1_1"),
    (["--content", "chelsea", "--style", "brick", "--steps", "-1"], 2, "steps must be >= 0"),
    (["--content", "chelsea", "--style", "brick", "--scales", "64,a"], 2, "whole numbers"),
    (["--content", "chelsea", "--style", "nosuch"], 1, "unknown image 'nosuch'"),
    (["--content", "missing.png", "--style", "brick"], 1, "image file not found"),
    (["--content", "chelsea", "--style", "brick", "--size", "8"], 1, "under the minimum"),
    (["--content", "chelsea", "--style", "brick", "--features", "vgg19", "--weights",
      "vgg.pth", "--steps", "1", "--size", "32"], 1, "vgg.pth"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, args, status, expected):
    proc = _stylize(*args, cwd=tmp_path)
    line = error_line(proc, status) if status == 1 else flag_error_line(proc)
    assert expected in line
    assert list(tmp_path.iterdir()) == []


def test_grey_and_rgba_files_are_converted_with_a_note(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 40), np.uint8), "L").save(tmp_path / "grey.png")
    Image.fromarray(rng.integers(0, 256, (40, 40, 4), np.uint8), "RGBA").save(tmp_path / "a.png")
    proc = _stylize("--content", "grey.png", "--style", "a.png", "--size", "32", "--steps", "2",
                    "--out", "o.png", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "greyscale" in proc.stderr and "alpha" in proc.stderr
    with Image.open(tmp_path / "o.png") as img:
        assert img.size == (32, 32) and img.mode == "RGB"


def _pickled_pth(path: Path) -> None:
    """A torch-style zip whose pickle would build an arbitrary object (os.system)."""
    import pickle
    import zipfile

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > pwned.txt",))

    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("vgg/data.pkl", pickle.dumps({"features.0.weight": Evil()}))


@pytest.mark.parametrize("make, args, expected", [
    (lambda d: (d / "broken.png").write_bytes(b"not an image at all"),
     ["--content", "broken.png", "--style", "brick"], "broken.png"),
    (lambda d: np.savez(d / "other.npz", w=np.zeros((3, 3), np.float32)),
     ["--content", "chelsea", "--style", "brick", "--weights", "other.npz"],
     "not a style_cnn weights file"),
    (lambda d: np.savez(d / "vgg.npz", **{"features.0.weight": np.zeros((8, 3, 3, 3),
                                                                        np.float32)}),
     ["--content", "chelsea", "--style", "brick", "--features", "vgg19", "--weights",
      "vgg.npz"], "vgg.npz"),
    (lambda d: _pickled_pth(d / "evil.pth"),
     ["--content", "chelsea", "--style", "brick", "--features", "vgg19", "--weights",
      "evil.pth"], "evil.pth"),
    (lambda d: (d / "run").mkdir(),
     ["--content", "chelsea", "--style", "brick", "--workdir", "run"], "run"),
])
def test_bad_files_are_one_line_and_nothing_is_written(tmp_path, make, args, expected):
    make(tmp_path)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    proc = _stylize(*args, "--size", "32", "--steps", "1", cwd=tmp_path)
    assert expected in error_line(proc, 1)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
