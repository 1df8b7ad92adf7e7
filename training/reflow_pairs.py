"""The pairs of reflow.py: a trained run's deterministic sampler, run on batches of prior
draws, gives (noise, image) pairs in the model's data space (diffusion/reflow.py), which a
`model.family='reflow'` run trains on (training/families/reflow.py)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import ml_collections
import numpy as np
from absl import logging

import progress
from diffusion import reflow, tasks
from errors import RequestError
from networks import layers
from training import inference

# The families whose runs couple noise and images by a probability flow.
PAIR_FAMILIES = ("diffusion", "reflow")


@dataclasses.dataclass(frozen=True)
class PairsRequest:
    """What reflow.py asks: `num_pairs` pairs in batches of `batch_size`, by `sampler`
    (None: the run's) in `steps` (None: the sampler's default or the run's), from the
    checkpoint at `checkpoint_step` (None: the newest), keys from `seed`."""

    num_pairs: int
    batch_size: int = 500
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    checkpoint_step: int | None = None
    use_ema: bool = True

    def check(self) -> None:
        """RequestError (one line) for counts that are not positive."""
        for name in ("num_pairs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise RequestError(f"--{name} must be a positive integer, got {value!r}")
        if self.steps is not None and self.steps < 1:
            raise RequestError(f"--steps must be a positive integer, got {self.steps}")


def check_run(config: ml_collections.ConfigDict, workdir: str) -> None:
    """RequestError (one line) unless `workdir` is an unconditional diffusion or flow run."""
    family = config.model.family
    if family not in PAIR_FAMILIES:
        raise RequestError(f"{workdir} is a model.family={family!r} run; reflow pairs come "
                           f"from a probability flow ({' or '.join(PAIR_FAMILIES)} runs)")
    if config.model.num_classes or config.model.self_condition_clusters:
        raise RequestError(f"{workdir} is a conditional model; reflow pairs come from an "
                           "unconditional one")


def draw_pairs(config: ml_collections.ConfigDict, workdir: str, request: PairsRequest
               ) -> tuple[np.ndarray, np.ndarray, dict]:
    """(noise, image, provenance) of `request` from the run in `workdir`, float32 (N, H, W,
    C) in the data space; RequestError for a stochastic sampler or a run that has none."""
    request.check()
    check_run(config, workdir)
    name = request.sampler or config.sampling.method
    try:
        reflow.check_deterministic(name)
    except ValueError as err:
        raise RequestError(f"--sampler: {err}") from err
    family, state, step = inference.restore_latest(config, workdir, request.checkpoint_step,
                                                   devices=jax.local_devices()[:1])
    shape = (request.batch_size, *family.data_shape)
    try:
        sampler = tasks.plain_sampler(config, family.sde, shape, name, request.steps)
    except (ValueError, TypeError) as err:
        raise RequestError(f"--sampler {name!r}: {err}") from err
    drawer = reflow.pair_drawer(family.sde, shape, name, sampler)
    params = family.sample_params(state, request.use_ema)
    draw = jax.jit(lambda params, key: drawer(key, family.score_fn(params)),
                   compiler_options=layers.compiler_options(family.data_shape))
    batches = -(-request.num_pairs // request.batch_size)
    noise, image, nfe = [], [], 0
    root = jax.random.PRNGKey(request.seed)
    for index in progress.bar(range(batches), desc="reflow pairs"):
        z, x0, nfe = draw(params, jax.random.fold_in(root, index))
        noise.append(np.asarray(z))
        image.append(np.asarray(x0))
    noise = np.concatenate(noise)[:request.num_pairs]
    image = np.concatenate(image)[:request.num_pairs]
    if not (np.isfinite(noise).all() and np.isfinite(image).all()):
        raise RequestError(f"the sampler {name!r} of {workdir} (step {step}) drew non-finite "
                           "images; nothing was written")
    provenance = {"teacher_workdir": str(Path(workdir)), "teacher_step": int(step),
                  "sde": config.training.sde, "sampler": name,
                  "steps": -1 if request.steps is None else int(request.steps),
                  "nfe": int(nfe), "seed": int(request.seed)}
    logging.info("Drew %d pairs with %s (%d evaluations a pair) from step %d of %s",
                 len(noise), name, int(nfe), step, workdir)
    return noise, image, provenance
