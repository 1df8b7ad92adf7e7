"""Every bad input the fault probe met gets one line, a non-zero exit and an untouched
workdir: config files that are missing or not Python, workdirs that are files, lie under a
file or cannot be written, outputs that cannot be written, and samples files that are not
.npz. Each case is one CLI run that fails before jax compiles anything; the runs start
together (a module fixture) so that their imports overlap."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.cli_errors import error_line
from tests.damage import files

ROOT = Path(__file__).resolve().parents[1]
TOY = f"{ROOT / 'tests' / 'configs' / 'tiny.py'}:toy"
AS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ROOT_SKIP = "runs as root, which ignores permission bits: the no-write-permission case " \
            "cannot be made here (the check itself is os.access, correct for other users)"


def _setup(case: str, base: Path) -> list[str]:
    """Makes the case's files under `base` and returns its command line."""
    workdir = base / "run"
    if case == "missing config":
        return ["train.py", f"--config={base / 'nope.py'}", f"--workdir={workdir}"]
    if case == "config with a syntax error":
        (base / "broken.py").write_text("def get_config(:\n    pass\n")
        return ["train.py", f"--config={base / 'broken.py'}", f"--workdir={workdir}"]
    if case == "workdir is a file":
        workdir.write_text("notes")
        return ["train.py", f"--config={TOY}", f"--workdir={workdir}"]
    if case == "workdir under a file":
        (base / "file").write_text("notes")
        return ["train.py", f"--config={TOY}", f"--workdir={base / 'file' / 'run'}"]
    if case in ("read-only parent, fresh run", "read-only workdir, resume",
                "read-only folder of sample.py's --out"):
        workdir.mkdir()
        (workdir / "config.json").write_text("{}")
        locked = base if case.startswith("read-only parent") else workdir
        if case.startswith("read-only parent"):
            workdir = base / "new"
        locked.chmod(0o555)
        if case.endswith("--out"):
            return ["sample.py", f"--config={TOY}", f"--workdir={workdir}",
                    f"--out={locked / 's.npz'}"]
        return ["train.py", f"--config={TOY}", f"--workdir={workdir}"]
    if case == "sample.py --out under a file":
        (base / "file").write_text("notes")
        return ["sample.py", f"--config={TOY}", f"--workdir={workdir}",
                f"--out={base / 'file' / 's.npz'}"]
    samples = {"empty .npz": b"", "text file as samples": b"images: none\n",
               "PNG as samples": b"\x89PNG\r\n\x1a\n" + bytes(64)}[case]
    (base / "samples.npz").write_bytes(samples)
    return ["evaluate.py", f"--config={TOY}", f"--workdir={base}",
            f"--samples={base / 'samples.npz'}", f"--out={base / 'm.json'}"]


CASES = {
    "missing config": "--config: the config file {base}/nope.py does not exist",
    "config with a syntax error": "syntax error in the config file {base}/broken.py, line 1",
    "workdir is a file": "--workdir {base}/run is a file, not a folder",
    "workdir under a file": "--workdir {base}/file/run lies under {base}/file, which is a file",
    "read-only parent, fresh run": "cannot be created: no write permission in {base}",
    "read-only workdir, resume": "--workdir {base}/run is not writable",
    "read-only folder of sample.py's --out": "is not writable",
    "sample.py --out under a file": "lies under {base}/file, which is a file",
    "empty .npz": "{base}/samples.npz is empty (0 bytes); expected an .npz of samples",
    "text file as samples": "{base}/samples.npz is a text file; expected an .npz of samples",
    "PNG as samples": "{base}/samples.npz is a PNG image; expected an .npz of samples",
}
NEEDS_NON_ROOT = {"read-only parent, fresh run", "read-only workdir, resume",
                  "read-only folder of sample.py's --out"}


@pytest.fixture(scope="module")
def refused(tmp_path_factory):
    """{case: (base folder, its files before, the finished process)}, all run at once."""
    env = os.environ.copy()
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    started = {}
    for case in CASES:
        if case in NEEDS_NON_ROOT and AS_ROOT:
            continue
        base = tmp_path_factory.mktemp("case")
        script, *args = _setup(case, base)
        started[case] = (base, files(base), subprocess.Popen(
            [sys.executable, str(ROOT / script), *args], cwd=ROOT, env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    done = {}
    for case, (base, before, proc) in started.items():
        out, err = proc.communicate(timeout=300)
        done[case] = (base, before, subprocess.CompletedProcess(proc.args, proc.returncode,
                                                                out, err))
    for base, _, _ in done.values():  # let pytest clean up the read-only folders
        for folder in (base, base / "run"):
            if folder.is_dir():
                folder.chmod(0o755)
    return done


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_with_a_non_zero_exit_and_the_workdir_untouched(refused, case):
    if case in NEEDS_NON_ROOT and AS_ROOT:
        pytest.skip(ROOT_SKIP)
    base, before, proc = refused[case]
    line = error_line(proc, status=1)
    assert CASES[case].format(base=base) in line, line
    assert files(base) == before


def test_a_samples_file_that_is_an_npz_still_loads(tmp_path):
    """The sniffing that names PNGs and text files lets real .npz files through."""
    from data.samples_file import load_samples

    path = tmp_path / "s.npz"
    np.savez(path, points=np.zeros((3, 2), np.float32))
    assert load_samples(path, (2,)).images.shape == (3, 2)
