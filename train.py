"""Trains a model: `python train.py --config configs/digits_vp.py --workdir runs/digits_vp`.

Resumes from the workdir's latest checkpoint; any config key can be overridden
(`--config.training.n_iters=300`). TensorBoard: `tensorboard --logdir WORKDIR`.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from training import cli, loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, TensorBoard logs and samples.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.maybe_initialize_distributed()
    result = loop.run(_CONFIG.value, _WORKDIR.value)
    logging.info("Finished at step %d", result["step"])


if __name__ == "__main__":
    cli.run(main)
