"""One trainer per workdir: a second is refused at once naming the holder's PID, a lock
left by a killed process does not block, and a refused run changes nothing."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from etils import epath

from errors import WorkdirBusyError
from tests.cli_errors import error_line
from tests.damage import files
from training import workdir_lock

ROOT = Path(__file__).resolve().parents[1]


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
    workdir = epath.Path(tmp_path)
    with workdir_lock.hold(workdir):
        with pytest.raises(WorkdirBusyError, match=rf"in use by another train.py \(PID "
                           rf"{os.getpid()} holds {tmp_path}/.lock\)"):
            workdir_lock.check_free(workdir)
        with pytest.raises(WorkdirBusyError, match=f"PID {os.getpid()}"):
            with workdir_lock.hold(workdir):
                pass
    workdir_lock.check_free(workdir)  # released at the end of the run


def test_the_lock_of_a_killed_process_does_not_block(tmp_path):
    lock = tmp_path / ".lock"
    script = (f"import fcntl, os, signal; fd = os.open({str(lock)!r}, os.O_RDONLY | "
              "os.O_CREAT); fcntl.flock(fd, fcntl.LOCK_EX); os.kill(os.getpid(), signal.SIGKILL)")
    killed = subprocess.run([sys.executable, "-c", script], check=False)
    assert killed.returncode == -9 and lock.exists()
    with workdir_lock.hold(epath.Path(tmp_path)):
        pass


def test_a_second_train_py_on_a_held_workdir_exits_at_once_and_changes_nothing(tmp_path):
    workdir = tmp_path / "run"
    (workdir / "checkpoints").mkdir(parents=True)
    with workdir_lock.hold(epath.Path(workdir)):
        before = files(workdir)
        proc = subprocess.run(
            [sys.executable, str(ROOT / "train.py"),
             f"--config={ROOT / 'tests' / 'configs' / 'tiny.py'}:toy", f"--workdir={workdir}"],
            cwd=ROOT, capture_output=True, text=True, timeout=120)
        line = error_line(proc, status=1)
        assert f"workdir {workdir} is in use by another train.py (PID {os.getpid()}" in line
        assert files(workdir) == before
