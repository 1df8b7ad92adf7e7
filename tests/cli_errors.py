"""What the tests expect of a CLI that refuses its input: exit status 1, no traceback and
exactly one line saying what is wrong."""

import subprocess


def error_line(proc: subprocess.CompletedProcess) -> str:
    """The one `error:` line of a refused command (asserts the exit status 1 and that no
    traceback was printed)."""
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]
