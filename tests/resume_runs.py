"""The exact-resume experiment the family tests share: train `n_iters` steps straight,
and `stop_at` steps then the rest resumed in a second workdir."""

from pathlib import Path

from training import loop


def straight_and_resumed(config, root: Path, devices, *, n_iters: int, stop_at: int):
    """(the straight run's last metrics, the resumed run's), with snapshot grids off; the
    workdirs are `root / 'straight'` and `root / 'resumed'`."""
    config = config.copy_and_resolve_references()
    config.training.snapshot_sampling = False
    config.training.n_iters = n_iters
    straight = loop.run(config, root / "straight", devices=devices)
    config.training.n_iters = stop_at
    loop.run(config, root / "resumed", devices=devices)
    config.training.n_iters = n_iters
    resumed = loop.run(config, root / "resumed", devices=devices)
    return straight, resumed
