"""What the tests expect of a CLI that refuses its input: no traceback, exactly one line
saying what is wrong, and the exit status: 2 for a flag error (a bad value, flags that do
not go together, a request the model cannot serve), 1 for bad data, config or workdir."""

import subprocess


def error_line(proc: subprocess.CompletedProcess, status: int = 1) -> str:
    """The one `error:` line of a refused command (asserts the exit status `status` and
    that no traceback was printed)."""
    assert proc.returncode == status, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def flag_error_line(proc: subprocess.CompletedProcess) -> str:
    """`error_line` of a command refused for its flags (exit status 2)."""
    return error_line(proc, status=2)
