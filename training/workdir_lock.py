"""One trainer per workdir: an exclusive `fcntl.flock` on `WORKDIR/.lock`, held for the run.

The kernel releases a flock when its process dies, however it dies, so a lock left by a
killed run never blocks the next one; the file itself stays, empty (removing it would let a
third process lock a fresh file while a second still holds the old one). A refused run
names the holder's PID from the kernel's table of locks (/proc/locks on Linux), so nothing
is written into the file and a refused run leaves the workdir byte-identical. Readers
(sample.py, evaluate.py) take no lock: orbax renames a step's folder into place only when
it is complete, so they never see a half-written step. Buckets (`gs://`) cannot be
locked; a run there is not guarded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator

from etils import epath

from errors import WorkdirBusyError

LOCK_FILE = ".lock"


def _is_local(workdir: str | os.PathLike) -> bool:
    return "://" not in os.fspath(workdir)


def _holder(fd: int) -> str:
    """'PID 1234' of the process holding the flock on `fd`'s file, from /proc/locks
    ('1: FLOCK  ADVISORY  WRITE 1234 08:01:5678 0 EOF'), or 'an unknown process'."""
    stat = os.fstat(fd)
    try:
        with open("/proc/locks") as table:
            lines = table.read().splitlines()
    except OSError:
        return "an unknown process"
    for line in lines:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5].count(":") == 2:
            major, minor, inode = fields[5].split(":")
            if (int(inode) == stat.st_ino and int(major, 16) == os.major(stat.st_dev)
                    and int(minor, 16) == os.minor(stat.st_dev)):
                return f"PID {fields[4]}"
    return "an unknown process"


def _busy(workdir: str | os.PathLike, fd: int) -> WorkdirBusyError:
    return WorkdirBusyError(
        f"workdir {os.fspath(workdir)} is in use by another train.py ({_holder(fd)} holds "
        f"{os.path.join(workdir, LOCK_FILE)}): wait for it to finish, stop it, or use "
        "another --workdir")


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return False
        raise
    return True


def check_free(workdir: str | os.PathLike) -> None:
    """WorkdirBusyError at once if a running trainer holds `workdir`; creates and changes
    nothing (a run refused later for its config leaves the workdir as it was)."""
    path = os.path.join(workdir, LOCK_FILE)
    if not _is_local(workdir) or not os.path.isfile(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # unreadable: `hold` reports what is wrong
    try:
        if not _try_lock(fd):
            raise _busy(workdir, fd)
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def hold(workdir: epath.Path, enabled: bool = True) -> Iterator[None]:
    """Holds the workdir's lock for the body (creating the workdir and the lock file);
    WorkdirBusyError, at once, if another process holds it. `enabled=False` (the other
    processes of a multi-host run, which share process 0's workdir): does nothing."""
    if not enabled or not _is_local(workdir):
        yield
        return
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(workdir / LOCK_FILE, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        if not _try_lock(fd):
            raise _busy(workdir, fd)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
