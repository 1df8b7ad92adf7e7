"""Trains a model: `python train.py --config configs/digits_vp.py --workdir runs/digits_vp`.

Resumes from the workdir's latest checkpoint; any config key can be overridden
(`--config.training.n_iters=300`). TensorBoard: `tensorboard --logdir WORKDIR`.
`--dry_run` builds and compiles the train step abstractly, prints the parameter count, the
batch shapes and the memory per device, and exits without training or writing anything.
`--strict` refuses a damaged newest checkpoint instead of resuming from an earlier one.
Exit status: 0 done (or stopped by SIGTERM, after saving what there was to keep), 1 bad
input, data, workdir or checkpoint, a diverged run or a failed save, 2 a flag error
(docs/training.md, "Reliability").
"""

if __name__ == "__main__":  # before the slow imports: SIGTERM from the first instant
    from training import termination

    termination.install_at_start()

from absl import app, flags, logging
from ml_collections import config_flags

from training import cli, termination, workdir_lock

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and samples.")
_DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Build the state and compile the train step abstractly, print the "
    "parameter count, batch shapes and memory per device, and exit: no training, nothing "
    "written to the workdir.")
_STRICT = flags.DEFINE_bool(
    "strict", False, "Refuse a damaged newest checkpoint (digests that do not match, or "
    "unreadable) instead of resuming from the newest intact one with a warning.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if cli.is_multihost():  # jax's preemption service takes SIGTERM
        termination.uninstall()
    workdir = None if _DRY_RUN.value else cli.checked_workdir(_WORKDIR.value)
    if workdir is not None and not cli.is_multihost():  # a second trainer: refused at once
        workdir_lock.check_free(workdir)
    # Imported here, after the checks of the flags and the workdir: bad input is refused
    # in a fraction of a second, before jax and the data libraries load.
    from training import dry_run, loop

    cli.maybe_initialize_distributed()
    if _DRY_RUN.value:
        dry_run.dry_run(_CONFIG.value)
        return
    result = loop.run(_CONFIG.value, workdir, strict=_STRICT.value)
    logging.info("Finished at step %d", result["step"])


def run() -> None:
    """The entry point (`python train.py`, the `scoregen-train` script)."""
    termination.install_at_start()
    cli.run(main)


if __name__ == "__main__":
    run()
