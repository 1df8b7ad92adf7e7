"""Loading a trained run for sampling and evaluation, and drawing samples from it."""

import math
from pathlib import Path

import jax
import ml_collections
import numpy as np

from training import images, sharding
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.errors import CheckpointError, UserError
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


def make_generator(
    family,
    num: int,
    *,
    batch_size: int = 256,
    sampler: str | None = None,
    steps: int | None = None,
    use_ema: bool = True,
):
    """`generate(state, seed=0) -> (samples, nfe per batch)` for `num` samples, compiled once.

    Samples are uint8 images (N, H, W, C), or float32 points (N, 2) for 2-D toy data.
    Batch `i` uses `fold_in(PRNGKey(seed), i)`, so a seed gives the same samples whatever
    the caller. `generate` raises UserError if the sampler produces non-finite values.
    """
    if num <= 0:
        raise UserError(f"the number of samples must be positive, got {num}")
    if batch_size <= 0:
        raise UserError(f"the sampling batch size must be positive, got {batch_size}")
    batch_size = min(batch_size, num)
    sample = family.make_sampler(batch_size, name=sampler, steps=steps)

    def generate(state: TrainState, seed: int = 0) -> tuple[np.ndarray, int]:
        params = family.sample_params(state, use_ema=use_ema)
        key = jax.random.PRNGKey(seed)
        chunks, nfe = [], 0
        for i in range(math.ceil(num / batch_size)):
            x, nfe = sample(params, jax.random.fold_in(key, i))
            x = np.asarray(jax.device_get(x))
            if not np.isfinite(x).all():
                raise UserError("the sampler produced non-finite values; nothing was written")
            chunks.append(images.to_uint8(x) if family.is_image_data else x.astype(np.float32))
        return np.concatenate(chunks)[:num], int(nfe)

    return generate


def generate(family, state: TrainState, num: int, *, seed: int = 0, **options):
    """`num` samples from `state` and the score evaluations per batch (see make_generator,
    whose keyword options this takes)."""
    return make_generator(family, num, **options)(state, seed)
