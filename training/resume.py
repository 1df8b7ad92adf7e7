"""Where a training run resumes: its newest intact checkpoint.

A checkpoint that cannot be read, or whose arrays differ from the digests saved with them,
is damaged (`DamagedCheckpointError`). train.py then falls back to the newest intact one,
warns naming the damaged one, and leaves it in place; with `strict` it refuses instead.
A checkpoint of another config is never skipped: that is the wrong workdir, not damage.
"""

from __future__ import annotations

import os
from typing import Any

import ml_collections
from absl import logging

from data import paths
from errors import DamagedCheckpointError
from training.checkpoint import Checkpointer


def _refuse_strict(err: DamagedCheckpointError) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"{err}; --strict: not falling back to an earlier checkpoint (without --strict, "
        "train.py resumes from the newest intact one)", err.step)


def _all_damaged(ckpt: Checkpointer, steps: list[int]) -> DamagedCheckpointError:
    return DamagedCheckpointError(
        f"every checkpoint in {ckpt.directory} is damaged (steps "
        f"{', '.join(map(str, sorted(steps)))}); they were left as they are: move them aside "
        "to train afresh, or use another --workdir", max(steps))


def saved_statistics(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                     strict: bool = False) -> dict | None:
    """The family statistics of the newest checkpoint whose statistics are intact (None
    without checkpoints, or for one that predates stored statistics); damaged ones are
    skipped here and reported by `restore_newest_intact`."""
    if not (paths.resolve(workdir) / "checkpoints").is_dir():
        return None
    ckpt = Checkpointer(workdir, config, read_only=True)
    try:
        steps = ckpt.all_steps()[::-1]
        for step in steps:
            try:
                return ckpt.statistics(step)
            except DamagedCheckpointError as err:
                if strict:
                    raise _refuse_strict(err) from None
        if steps:
            raise _all_damaged(ckpt, steps)
        return None
    finally:
        ckpt.close()


def restore_newest_intact(ckpt: Checkpointer, abstract_state: Any, strict: bool = False
                          ) -> tuple[Any, dict, int] | None:
    """(state, data iterator state, step) of the newest intact checkpoint, or None if there
    is none at all. Each damaged newer one gets a warning and is left in place; `strict`:
    the first damaged one is refused (DamagedCheckpointError), as is a workdir of damaged
    checkpoints only."""
    damaged: list[int] = []
    for step in ckpt.all_steps()[::-1]:
        try:
            state, data_state = ckpt.restore(step, abstract_state)
        except DamagedCheckpointError as err:
            if strict:
                raise _refuse_strict(err) from None
            logging.warning("%s; trying the checkpoint before it", err)
            damaged.append(step)
            continue
        if damaged:
            logging.warning(
                "Resuming from step %d, the newest intact checkpoint; the damaged step(s) %s "
                "stay in %s as they are, and the run does not save over them (it skips "
                "those steps' saves)", step, ", ".join(map(str, sorted(damaged))),
                ckpt.directory)
        return state, data_state, step
    if damaged:
        raise _all_damaged(ckpt, damaged)
    return None
