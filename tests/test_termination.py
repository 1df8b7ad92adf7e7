"""SIGTERM at any moment of train.py: before training it exits 0 at once saying nothing
needed saving; during the first step's compilation the loop stops with nothing to save."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from training import termination

ROOT = Path(__file__).resolve().parents[1]


def _catches_sigterm(pid: int) -> bool:
    """Whether the process has a handler for SIGTERM (its SigCgt mask in /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(next(line for line in status.splitlines()
                      if line.startswith("SigCgt:")).split()[1], 16)
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def test_sigterm_in_the_first_instants_exits_zero_at_once_saying_nothing_needed_saving(
        tmp_path):
    workdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "train.py"),
         f"--config={ROOT / 'tests' / 'configs' / 'tiny.py'}:toy", f"--workdir={workdir}"],
        cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not _catches_sigterm(proc.pid):  # the handler is in place from the top of train.py
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
        time.sleep(0.01)
    sent = time.time()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.time() - sent < 10  # at once: no training, no compilation
    assert "SIGTERM before training started: nothing needed saving" in err
    assert "Traceback" not in err
    assert not (workdir / "checkpoints").exists() or not any((workdir / "checkpoints").iterdir())


def test_sigterm_inside_a_weakref_callback_still_exits_at_once():
    """Python prints and ignores an exception raised in a weakref callback (an import's
    module-lock clean-up is one), so a SIGTERM whose handler ran there must not raise."""
    script = """if True:
        import os, signal, sys, weakref
        from training import termination
        termination.install_at_start()

        class Lock:
            pass

        def released(ref):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(1000):  # bytecodes, at which the handler runs
                pass

        lock = Lock()
        ref = weakref.ref(lock, released)
        del lock
        print("the run went on", file=sys.stderr)
        sys.exit(3)
    """
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "nothing needed saving" in proc.stderr
    assert "the run went on" not in proc.stderr and "Traceback" not in proc.stderr


def test_a_signal_before_the_first_step_completes_means_no_progress_to_keep():
    def never(step: int) -> bool:
        raise AssertionError("one process never asks the preemption service")

    with termination.TerminationRequest(never, start_step=5) as request:
        os.kill(os.getpid(), signal.SIGTERM)  # during the first step (its compilation)
        assert request.check(6) and request.before_progress
    with termination.TerminationRequest(never, start_step=5) as request:
        request.completed(6)
        os.kill(os.getpid(), signal.SIGTERM)  # after a step: there is progress to save
        assert request.check(7) and not request.before_progress
