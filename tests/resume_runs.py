"""The exact-resume experiment the family tests share: a run trained `n_iters` steps
straight, against the same run resumed from its own checkpoint at `stop_at`."""

import shutil
from pathlib import Path

from training import loop


def straight_and_resumed(config, root: Path, devices, *, n_iters: int, stop_at: int):
    """(the straight run's last metrics, the resumed run's), with snapshot grids off.

    The straight run (`root / 'straight'`) also checkpoints at `stop_at`, asynchronously
    while it trains on, as a preempted run does. `root / 'resumed'` is a copy of it without
    the checkpoints after `stop_at`, trained again to `n_iters`: it restores the parameters,
    optimiser, EMA, key and data iterator of `stop_at` and must end where the straight run
    did. (Two runs instead of three: a run stopped at `stop_at` saves the same checkpoint.)
    """
    config = config.copy_and_resolve_references()
    config.training.snapshot_sampling = False
    config.training.n_iters = n_iters
    config.training.snapshot_freq_for_preemption = stop_at
    config.training.max_to_keep = n_iters
    straight = loop.run(config, root / "straight", devices=devices)
    resumed_dir = root / "resumed"
    shutil.copytree(root / "straight", resumed_dir)
    later = [p for p in (resumed_dir / "checkpoints").iterdir() if int(p.name) > stop_at]
    assert later, "the straight run saved nothing after stop_at"
    for path in later:
        shutil.rmtree(path)
    resumed = loop.run(config, resumed_dir, devices=devices)
    return straight, resumed
