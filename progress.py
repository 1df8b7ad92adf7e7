"""Progress bars with an ETA for long loops: sampling batches, feature extraction, bits/dim
and likelihood batches, the training loop's bar.

A leaf, like errors.py: it imports nothing of the project, so evaluation/ and training/
both use it without importing each other. A bar goes to stderr, only on process 0, and
only when stderr is a terminal, unless asked: `SCOREGEN_PROGRESS=1` shows bars off a
terminal too (redrawn at most every 30 s there, so a log file is not flooded),
`SCOREGEN_PROGRESS=0` hides them everywhere; `set_enabled` does the same from code. A bar
only wraps an iterable: it never changes what the loop computes.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any

from tqdm import tqdm

ENV = "SCOREGEN_PROGRESS"
_ON, _OFF = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_forced: bool | None = None  # set_enabled's setting; None: the environment decides
OFF_TTY_INTERVAL_S = 30.0


def set_enabled(on: bool | None) -> None:
    """True: bars even off a terminal; False: no bars; None: the default (terminal only,
    or `$SCOREGEN_PROGRESS`)."""
    global _forced
    _forced = on


def _asked() -> bool | None:
    if _forced is not None:
        return _forced
    setting = os.environ.get(ENV, "").strip().lower()
    return True if setting in _ON else False if setting in _OFF else None


def _is_chief() -> bool:
    jax = sys.modules.get("jax")  # never imports jax (or starts its backends) for a bar
    return jax is None or jax.process_index() == 0


def _is_tty() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def enabled() -> bool:
    """Whether a bar made now would show (see the module docstring)."""
    asked = _asked()
    if asked is False or not _is_chief():
        return False
    return asked is True or _is_tty()


def bar(iterable: Iterable | None = None, *, total: int | None = None, desc: str | None = None,
        unit: str = "batch", show: bool = True, **options: Any) -> tqdm:
    """`tqdm(iterable, ...)` on stderr with rate and ETA, or a silent pass-through where
    bars are off (or `show` is False: the caller's own condition). Nested bars are cleared
    when done (`leave=None`), the outermost kept."""
    on, tty = show and enabled(), _is_tty()
    options = {"leave": None, "dynamic_ncols": tty,
               "mininterval": 0.5 if tty else OFF_TTY_INTERVAL_S, **options}
    return tqdm(iterable, total=total, desc=desc, unit=unit, file=sys.stderr,
                disable=not on, **options)
