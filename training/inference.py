"""Loading a trained run for sampling and evaluation."""

from pathlib import Path

import jax
import ml_collections

from training import sharding
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.errors import CheckpointError
from training.families import get_family
from training.state import TrainState


def restore_latest(config: ml_collections.ConfigDict, workdir: str | Path):
    """Returns (family, state, step) from the newest checkpoint, placed on one device.

    Raises CheckpointError if the workdir has no checkpoint or one of another config.
    """
    checkpoints = Path(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")
    family = get_family(config)
    ckpt = Checkpointer(workdir, config)
    try:
        step = ckpt.latest_step()
        if step is None:
            raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")
        mesh = sharding.make_mesh((("data", 1), ("fsdp", 1)), jax.devices()[:1])
        abstract: TrainState = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
        placed = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
        state, _ = ckpt.restore(step, abstract_with_shardings(abstract, placed))
    finally:
        ckpt.close()
    return family, state, step
