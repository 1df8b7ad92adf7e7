"""The CLIs keep a persistent compilation cache: on by default, in a folder the user picks."""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "tests" / "configs" / "tiny.py") + ":toy"


def _train(tmp_path: Path, workdir: str, *flags: str) -> subprocess.CompletedProcess:
    env = os.environ.copy()
    env.pop("JAX_COMPILATION_CACHE_DIR")  # the test session's cache: the user has none
    env["HOME"] = str(tmp_path / "home")
    env["XLA_FLAGS"] = env["XLA_FLAGS"].replace("--xla_force_host_platform_device_count=8", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), f"--config={TOY}",
         f"--workdir={tmp_path / workdir}", "--config.training.snapshot_sampling=False", *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def _entries(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()} if folder.exists() else set()


def test_the_cache_is_on_by_default_under_the_users_home(tmp_path):
    _train(tmp_path, "run")
    assert _entries(tmp_path / "home" / ".cache" / "scoregen" / "jax")


def test_a_chosen_folder_is_filled_and_reused_and_an_empty_one_turns_it_off(tmp_path):
    cache = tmp_path / "cache"
    _train(tmp_path, "first", f"--compilation_cache_dir={cache}")
    first = _entries(cache)
    assert first
    _train(tmp_path, "second", f"--compilation_cache_dir={cache}")
    assert _entries(cache) == first  # the same programs: nothing new compiled
    _train(tmp_path, "off", "--compilation_cache_dir=")
    assert not (tmp_path / "home" / ".cache").exists()
