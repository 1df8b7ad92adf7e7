"""`pip install .` works: the wheel holds every package, the CLIs as modules, the data the
code reads at run time and the console scripts; an installed copy imports from anywhere;
pyproject.toml's dependencies are requirements.txt's.

The wheel is built offline (`--no-build-isolation`, the environment's setuptools) from a
copy of the sources, so the checkout gets no build/ or .egg-info folder.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]
SCRIPTS = {"scoregen-train": "train:run", "scoregen-sample": "sample:run",
           "scoregen-evaluate": "evaluate:run", "scoregen-stylize": "stylize:run"}


def _pip(*args: str, cwd: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check",
                           "--no-input", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    pytest.importorskip("setuptools.command.bdist_wheel",
                        reason="needs setuptools >= 70.1 (requirements.txt)")
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("pyproject.toml", "README.md", *(f"{m}.py" for m in SETUPTOOLS["py-modules"])):
        shutil.copy2(ROOT / name, source / name)
    for top in {p.split(".")[0] for p in SETUPTOOLS["packages"]}:
        shutil.copytree(ROOT / top, source / top, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    _pip("wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", str(out),
         str(source), cwd=source)
    (built,) = out.glob("scoregen-*.whl")
    return built


def test_the_package_list_is_every_package_of_the_checkout():
    """Every folder with an __init__.py (but tests/) is listed, and every root module."""
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in ROOT.rglob("__init__.py")
             if not any(part.startswith(".") for part in p.relative_to(ROOT).parts)}
    found = {p for p in found if p.split(".")[0] not in ("tests", "build")}
    assert set(SETUPTOOLS["packages"]) == found
    assert set(SETUPTOOLS["py-modules"]) == {p.stem for p in ROOT.glob("*.py")}


def test_the_wheel_holds_the_packages_the_data_and_the_scripts(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for package in SETUPTOOLS["packages"]:
        assert f"{package.replace('.', '/')}/__init__.py" in names, package
    for module in SETUPTOOLS["py-modules"]:
        assert f"{module}.py" in names, module
    assert "evaluation/digits_cnn.npz" in names  # evaluation/digits_features.py reads it
    assert "training/loop.py" in names and "training/families/diffusion.py" in names
    assert not any(n.startswith(("tests/", "bench/", "docs/")) for n in names)
    (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
    text = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "[console_scripts]" in text
    for script, target in SCRIPTS.items():
        assert re.search(rf"^{script} = {re.escape(target)}$", text, re.M), text


def test_an_installed_copy_imports_and_runs_from_anywhere(wheel, tmp_path):
    target, elsewhere = tmp_path / "site", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _pip("install", "--no-deps", "--no-index", "--target", str(target), str(wheel),
         cwd=elsewhere)
    env = {**os.environ, "PYTHONPATH": str(target), "JAX_PLATFORMS": "cpu"}
    code = ("import training.loop, evaluation.digits_features as f, configs; "
            "print(training.loop.__file__); print(f.PINNED_FILE.is_file()); "
            "print(configs.load('configs/digits_vp.py').model.family)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=elsewhere, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    loop_file, pinned, family = proc.stdout.split()
    assert Path(loop_file).is_relative_to(target)  # not the checkout
    assert pinned == "True" and family == "diffusion"
    # The console script: evaluate.py's entry, down to its one-line error.
    script = target / "bin" / "scoregen-evaluate"
    proc = subprocess.run([sys.executable, str(script), f"--workdir={elsewhere / 'run'}"],
                          cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert f"no config.json in {elsewhere / 'run'}: pass --config, or train first" in \
        proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]


def test_the_dependencies_are_requirements_txts():
    lines = [line.split("#")[0].strip() for line in
             (ROOT / "requirements.txt").read_text().splitlines()]
    required = {line for line in lines if line}
    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = set(PYPROJECT["project"]["dependencies"]).union(*extras.values())
    assert declared == required
    assert not {"pytest>=8.0", "ruff>=0.6"} & set(PYPROJECT["project"]["dependencies"])
