"""Where a CLI will write, checked before any work: a folder (a workdir) or a file's folder
(sample.py's --out), so that a path under a file or without write permission is refused in
one line at once instead of after minutes of training or sampling."""

from __future__ import annotations

import os
from pathlib import Path

from errors import RequestError, UserError


def _nearest_existing(path: str) -> str:
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def check_folder(path: str | os.PathLike, what: str) -> str:
    """`path` (absolute) if the process can create or write the folder; UserError naming
    `what` (a flag) otherwise: a file, a path under a file, no write permission. Buckets
    (`gs://`) are left to their client."""
    text = os.fspath(path)
    if "://" in text:
        return text
    text = os.path.abspath(text)
    if os.path.isdir(text):
        if not os.access(text, os.W_OK | os.X_OK):
            raise UserError(f"{what} {text} is not writable (no write permission)")
        return text
    if os.path.lexists(text):
        raise UserError(f"{what} {text} is a file, not a folder")
    existing = _nearest_existing(text)
    if not os.path.isdir(existing):
        raise UserError(f"{what} {text} lies under {existing}, which is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"{what} {text} cannot be created: no write permission in {existing}")
    return text


def check_file(path: str | os.PathLike, what: str) -> str:
    """`path` (absolute) if the file can be written (its folder made if need be);
    UserError naming `what` otherwise."""
    text = os.path.abspath(os.fspath(path))
    if os.path.isdir(text):
        raise UserError(f"{what} {text} is a folder, not a file")
    existing = _nearest_existing(os.path.dirname(text))
    if not os.path.isdir(existing):
        raise UserError(f"{what} {text} lies under {existing}, which is a file, not a folder")
    check_folder(os.path.dirname(text), f"the folder of {what}")
    if os.path.exists(text) and not os.access(text, os.W_OK):
        raise UserError(f"{what} {text} is not writable (no write permission)")
    return text


def npz_out(out: str | None, workdir: str, default_name: str) -> Path:
    """A CLI's `--out`: `out`, or `workdir / default_name`; RequestError unless it ends in
    .npz, UserError unless it can be written."""
    path = Path(out or Path(workdir) / default_name)
    if path.suffix != ".npz":
        raise RequestError(f"--out must end in .npz, got {path}")
    check_file(path, "--out")
    return path

