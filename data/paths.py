"""Workdirs and data dirs as `etils.epath` paths, so cloud buckets work like local folders.

`gs://bucket/run` goes through epath's fsspec backend (gcsfs) or TensorFlow's gfile; a
local path is a plain path. A bucket path without either installed is refused in one line
before anything is written, instead of failing at the first save.
"""

from __future__ import annotations

import importlib.util
import os

from etils import epath

from errors import UserError

# URL scheme -> the packages of which any one gives epath that file system.
_SCHEME_SUPPORT = {
    "gs": ("gcsfs", "tensorflow"),
    "s3": ("s3fs", "tensorflow"),
}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve(path: str | os.PathLike, what: str = "workdir") -> epath.Path:
    """`path` as an `epath.Path`; a UserError naming `what` if its file system is missing.

    Local paths become absolute, so a run's logs name the folder unambiguously.
    """
    text = os.fspath(path)
    if not text:
        raise UserError(f"the {what} is empty")
    scheme, sep, _ = text.partition("://")
    if not sep:
        return epath.Path(os.path.abspath(text))
    if scheme not in _SCHEME_SUPPORT:
        raise UserError(
            f"the {what} {text!r} uses the scheme {scheme}://, which is not supported "
            f"(local paths, {', '.join(s + '://' for s in _SCHEME_SUPPORT)})"
        )
    packages = _SCHEME_SUPPORT[scheme]
    if not any(_installed(p) for p in packages):
        raise UserError(
            f"the {what} {text!r} needs {scheme}:// support: pip install {packages[0]} "
            f"(or {' / '.join(packages[1:])})"
        )
    return epath.Path(text)
