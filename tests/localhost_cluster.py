"""Multi-process jax.distributed jobs on 127.0.0.1 for the tests, one job at a time.

A test picks its coordinator's port by binding port 0 and closing the socket; its processes
bind that port seconds later, after their imports. Two such jobs started at once by the two
pytest-xdist workers could meet on one port in between, and the coordination service's
gRPC server listens with SO_REUSEPORT: a second coordinator binds a port a live one
holds, and the processes of the two jobs then reach the wrong coordinator (tried by hand:
the first job died of a registration error). So every job holds one lock, shared by the
workers, from picking its port until its processes have exited.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import tempfile
from collections.abc import Iterator

_LOCK = os.path.join(tempfile.gettempdir(), "scoregen-test-localhost-cluster.lock")


@contextlib.contextmanager
def coordinator_port() -> Iterator[int]:
    """A free localhost port for a job's coordinator, held by this job alone while the
    context is open (its processes must have exited when it closes)."""
    with open(_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            yield port
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
