"""What a failed checkpoint save leaves behind and how it is reported: the cause in a few
words, the free space, and the removal of the save's temporary folder."""

import os
import re
import shutil
import time


def cause(err: Exception) -> str:
    """What went wrong, in a few words ('No space left on device')."""
    text = str(err)
    code = re.search(r"os_error_code='?(\d+)", text)
    if code:
        return os.strerror(int(code.group(1)))
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    first = text.strip().splitlines()[0] if text.strip() else type(err).__name__
    return first[:200]


def free_space(directory) -> str:
    """'12.3 MiB free' for the file system holding `directory` (or that it is unknown)."""
    try:
        free = shutil.disk_usage(os.fspath(directory)).free
    except (OSError, TypeError, ValueError):  # a bucket, or the folder is gone
        return "free space unknown"
    return f"{free / 2**20:.1f} MiB free"


def remove_partial(directory, step: int, patience_s: float = 5.0,
                    quiet_s: float = 0.2) -> None:
    """Removes the temporary folder(s) of a failed save of `step`. The save's writer
    threads may still finish a file after the failure is reported (seen under load), so
    removal repeats until no folder has appeared for `quiet_s`, or `patience_s` passes."""
    deadline = time.monotonic() + patience_s
    gone_since = None
    while time.monotonic() < deadline:
        partials = list(directory.glob(f"{step}.orbax-checkpoint-tmp*"))
        if partials:
            gone_since = None
            for partial in partials:
                shutil.rmtree(partial, ignore_errors=True)
        elif gone_since is None:
            gone_since = time.monotonic()
        elif time.monotonic() - gone_since >= quiet_s:
            return
        time.sleep(0.05)
