"""SIGTERM (preemption, `kill`) at any moment of a training process.

From process start until the loop holds a state (`install_at_start`): there is nothing to
save, so the process exits 0 at once, saying so. A Python handler runs between bytecodes,
so a signal that arrives during a long C++ call (jax's compilation) takes effect when the
call returns. In the loop (`TerminationRequest`): the signal becomes a step at which the
run saves and stops; if no step has completed since the start (the signal came during the
first step's compilation), there is no progress to keep and nothing is saved.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable


def _exit_at_once(signum, frame) -> None:
    """Ends the process with status 0 by `os._exit`, not `SystemExit`: the handler runs in
    whatever Python code the main thread is in, and a SystemExit raised inside a weakref
    callback or a `__del__` (an import's module-lock clean-up, say) is printed as an
    ignored exception while the run goes on. Nothing is lost: no state exists yet, and the
    kernel releases the workdir's flock."""
    prog = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "train.py"
    print(f"{prog}: SIGTERM before training started: nothing needed saving; exiting",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)


def install_at_start() -> None:
    """Makes SIGTERM exit 0 at once until a training loop takes over (main thread only)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_at_once)


def uninstall() -> None:
    """Gives SIGTERM back to its default (a multi-host run: jax's preemption service
    installs its own handler at `jax.distributed.initialize`)."""
    if (threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGTERM) is _exit_at_once):
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class TerminationRequest:
    """Turns SIGTERM into a step at which every process saves and stops.

    One process: a Python handler sets a flag the loop checks between steps. Many processes:
    SIGTERM may reach only some hosts, yet a checkpoint is written by all of them together,
    so they must stop at the same step. jax.distributed's preemption service catches the
    signal on any host and agrees on a step that all reach (`reached_sync_point`, orbax's
    `CheckpointManager.reached_preemption`: a host-side check, well under a microsecond).
    A Python handler would replace the service's, so none is installed then.

    `completed(step)` after each step tells the handler where the run is; a signal that
    arrives before the first step completed sets `before_progress`.
    """

    def __init__(self, reached_sync_point: Callable[[int], bool], start_step: int = 0):
        self.requested = False
        self.before_progress = False
        self._reached_sync_point = reached_sync_point
        import jax  # here: install_at_start runs before jax is imported

        self._many_processes = jax.process_count() > 1
        self._previous = None
        self._start_step = self._step = start_step

    def __enter__(self):
        if not self._many_processes and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.requested:
            self.before_progress = self._step == self._start_step
        self.requested = True

    def completed(self, step: int) -> None:
        """The loop finished `step` (a signal after this is not `before_progress`)."""
        self._step = step

    def check(self, step: int) -> bool:
        """Whether to stop after `step`; every process calls it once per step."""
        if self._many_processes and not self.requested:
            self.requested = self._reached_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
