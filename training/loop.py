"""The training loop: thin, family-agnostic and resumable.

`run(config, workdir)` trains the family named by the config, resuming from the latest
checkpoint in `workdir`. Everything that varies by model lives in the family's
`init_state` / `train_step` / `eval_step` / `make_sampler`; this file only schedules them.
"""

import contextlib
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from data import paths, pipeline
from errors import NonFiniteLossError, SaveFailedError
from networks import layers
from training import (
    accumulate,
    eval_hook,
    images,
    resume,
    run_config,
    run_info,
    sharding,
    workdir_lock,
)
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.families import get_family
from training.families.base import STYLIZE
from training.families.request import SampleRequest
from training.monitor import Monitor
from training.sharding import state_shardings
from training.step import LeafStep
from training.termination import TerminationRequest

# Metrics that must stay finite; a NaN gradient norm means the next parameters are NaN.
_GUARDED_METRICS = ("loss", "grad_norm", "d_loss", "g_loss", "d_grad_norm", "g_grad_norm")


class _MetricBuffer:
    """Keeps per-step device metrics and fetches them in one transfer when needed."""

    def __init__(self):
        self._pending: list[tuple[int, dict]] = []

    def add(self, step: int, metrics: dict) -> None:
        self._pending.append((step, metrics))

    def drain(self, last_good_step: int | None,
              checkpoint_dir: epath.Path) -> dict[str, float]:
        """Means since the last drain; raises if any guarded metric was not finite."""
        if not self._pending:
            return {}
        steps, values = zip(*self._pending, strict=True)
        values = jax.device_get(list(values))
        self._pending = []
        for step, metrics in zip(steps, values, strict=True):
            for name in _GUARDED_METRICS:
                if name in metrics and not np.isfinite(metrics[name]):
                    where = (f"step {last_good_step} in {checkpoint_dir} is untouched"
                             if last_good_step is not None else "no checkpoint was written")
                    raise NonFiniteLossError(
                        f"{name} became {float(metrics[name])} at step {step}; training "
                        f"stopped without saving ({where}); try a lower optim.lr or "
                        "optim.grad_clip"
                    )
        return {k: float(np.mean([m[k] for m in values])) for k in values[0]}


def _global_batch(local: dict, batch_sharding) -> dict:
    return {
        k: jax.make_array_from_process_local_data(batch_sharding, np.asarray(v))
        for k, v in local.items()
        if k in ("image", "label", "caption", "style")
    }


def build(config: ml_collections.ConfigDict, devices=None, statistics: dict | None = None):
    """(family, mesh, batch sharding) of a training run; UserError for a config, batch or
    input that training would refuse, before anything is written. `statistics`: those of
    the run's checkpoints (None: computed from the data, as a new run does)."""
    family = get_family(config, statistics)
    # Inputs only training reads (a discriminator's generated images), checked before the
    # workdir is touched; sampling from the run later does not need them.
    family.prepare_training()
    mesh = sharding.make_mesh(config.sharding.mesh, devices)
    training = config.training
    sharding.check_batch_divisible(training.batch_size, mesh)
    accumulate.check_accumulation(training.batch_size, training.grad_accum_steps, mesh.size)
    return family, mesh, sharding.batch_sharding(mesh)


def run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
        devices=None, strict: bool = False) -> dict[str, Any]:
    """Trains until `config.training.n_iters` steps, resuming from `workdir` if it can.

    `workdir` is a local path or a bucket (`gs://...`) that every host sees; process 0
    holds its lock (`training/workdir_lock.py`) for the run. Resumes from the newest intact
    checkpoint, warning of damaged newer ones (`strict`: refuses them instead). Returns the
    last reported scalars plus `step`. Raises `UserError` subclasses for bad input (config,
    data, workdir, a damaged checkpoint), `WorkdirBusyError` if another trainer holds the
    workdir, `NonFiniteLossError` if training diverges and `SaveFailedError` if a
    checkpoint cannot be written.
    """
    workdir = paths.resolve(workdir)
    is_chief = jax.process_index() == 0
    if is_chief:
        workdir_lock.check_free(workdir)  # at once, before any slow set-up
    # A resumed run keeps the statistics it started with (its clusters, its VAE).
    family, mesh, batch_sharding = build(config, devices,
                                         resume.saved_statistics(config, workdir, strict))
    abstract_state = jax.eval_shape(family.init_state, jax.random.PRNGKey(config.seed))
    state_sh = state_shardings(abstract_state, mesh, config.sharding.rules)
    # Sample-quality metrics every eval_freq steps, if asked; bad settings fail here, early.
    sample_eval = (eval_hook.TrainingEvaluator(config, family)
                   if config.eval.metrics_during_training else None)
    train_iter = pipeline.make_train_iterator(
        config.data, global_batch_size=config.training.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    # Only now, with the input checked, is anything created in the workdir.
    with workdir_lock.hold(workdir, enabled=is_chief):
        workdir.mkdir(parents=True, exist_ok=True)  # a bucket, or another host's process
        ckpt = Checkpointer(workdir, config, owner=is_chief)
        try:
            result = _loop(config, workdir, family, mesh, batch_sharding, ckpt, train_iter,
                           abstract_state, state_sh, sample_eval, strict)
        except BaseException:
            # The error under way says what happened; a failed last save must not hide it.
            with contextlib.suppress(SaveFailedError):
                ckpt.close()
            raise
        ckpt.close()
        return result


def _loop(config, workdir, family, mesh, batch_sharding, ckpt: Checkpointer, train_iter,
          abstract_state, state_sh, sample_eval, strict: bool) -> dict[str, Any]:
    training = config.training
    is_chief = jax.process_index() == 0
    placed_abstract_state = abstract_with_shardings(abstract_state, state_sh)
    xla_options = layers.compiler_options(family.data_shape)
    train_step = LeafStep(family.train_step, abstract_state, state_sh, batch_sharding,
                          sharding.replicated(mesh), xla_options)
    first_batch = None
    resumed = resume.restore_newest_intact(ckpt, placed_abstract_state, strict)
    if resumed is not None:
        state, data_state, start_step = resumed
        train_iter.set_state(data_state)
        logging.info("Resuming from checkpoint step %d in %s", start_step, ckpt.directory)
    else:
        start_step = 0
        if training.n_iters > 0:
            # The step compiles on another thread while the state is built (a resumed run
            # finds it in the compilation cache instead).
            first_batch = _global_batch(next(train_iter), batch_sharding)
            train_step.compile_ahead(jax.tree.leaves(placed_abstract_state), first_batch)
        # Built eagerly and then placed: compiling the initialisers of a large network as
        # one program costs more than running them (CIFAR-10 DDPM++: 20 s against 3 s).
        state = sharding.place(family.init_state(jax.random.PRNGKey(config.seed)), state_sh)
        if is_chief:
            (workdir / run_config.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
        logging.info("Starting from scratch in %s (it holds no checkpoint): %s", workdir,
                     describe(config))
    run_info.log_start(config, mesh, state)
    last_saved = start_step if start_step > 0 else None

    if start_step >= training.n_iters:
        logging.info("Step %d already reaches training.n_iters=%d: nothing to do",
                     start_step, training.n_iters)
        return {"step": start_step}

    as_state = train_step.state
    leaves = train_step.leaves(state)
    del state  # donated at the first step: only `leaves` is live
    eval_step = jax.jit(family.eval_step, out_shardings=sharding.replicated(mesh),
                        compiler_options=xla_options)
    eval_batch = _held_out_batch(config, batch_sharding)
    eval_key = jax.random.PRNGKey(config.seed + 1)
    snapshot_sampler = None

    monitor = Monitor(workdir, total_steps=training.n_iters, start_step=start_step,
                      global_batch=training.batch_size, enabled=is_chief)
    metrics = _MetricBuffer()
    reported: dict[str, float] = {}
    step = start_step
    saved, stopping = True, False
    try:
        with TerminationRequest(ckpt.reached_preemption, start_step) as termination:
            while step < training.n_iters:
                batch = (first_batch if first_batch is not None
                         else _global_batch(next(train_iter), batch_sharding))
                first_batch = None
                leaves, step_metrics = train_step(leaves, batch)
                step += 1
                termination.completed(step)
                stopping = termination.check(step)
                if stopping and termination.before_progress:
                    logging.warning("SIGTERM during compilation, before step %d completed: "
                                    "stopped with nothing new to save (%s)", step,
                                    f"checkpoint {last_saved} is the newest" if last_saved
                                    else "no checkpoint was written")
                    return {**reported, "step": step - 1}
                ckpt.check_save()  # a failed background save stops the run here
                metrics.add(step, step_metrics)
                monitor.advance()
                if step == start_step + 1:
                    monitor.reset_timer(step)  # leave compilation out of the throughput
                last = step == training.n_iters
                if step % training.log_freq == 0 or last:
                    scalars = metrics.drain(last_saved, ckpt.directory)
                    if eval_batch is not None and (step % training.eval_freq == 0 or last):
                        held_out = eval_step(as_state(leaves), eval_batch, eval_key)
                        scalars.update(jax.device_get(held_out))
                    reported = monitor.report(step, scalars)
                    if sample_eval is not None and (step % training.eval_freq == 0 or last):
                        reported.update(monitor.write(step, sample_eval(as_state(leaves))))
                        monitor.reset_timer(step)  # steps/s measures training, not sampling
                snapshot = step % training.snapshot_freq == 0 or last
                if snapshot or step % training.snapshot_freq_for_preemption == 0 or stopping:
                    metrics.drain(last_saved, ckpt.directory)  # never save a diverged state
                    saved = ckpt.save(step, as_state(leaves), train_iter.get_state(),
                                      family.statistics)
                    last_saved = step if saved else last_saved
                if snapshot and saved and training.snapshot_sampling:
                    if snapshot_sampler is None and STYLIZE not in family.capabilities:
                        snapshot_sampler = family.make_sampler(
                            SampleRequest(training.num_snapshot_samples))
                    picture, note = _snapshot(family, snapshot_sampler, as_state(leaves), step)
                    ckpt.wait()  # nothing is written for a step whose checkpoint failed
                    if is_chief:
                        images.save_png(workdir / "samples" / f"step_{step:07d}.png", picture)
                        monitor.image(step, "samples", picture)
                        logging.info("step %d: %s", step, note)
                if snapshot:
                    monitor.reset_timer(step)  # steps/s measures training, not sampling
                if stopping and saved:
                    logging.warning("SIGTERM: saved checkpoint at step %d and stopped", step)
                    break
                if stopping:  # the step holds a damaged checkpoint, left as is
                    logging.warning("SIGTERM: stopped at step %d; the newest saved checkpoint "
                                    "is step %s", step, last_saved)
                    break
            ckpt.wait()
    finally:
        monitor.close()
    if not saved and not stopping:  # SIGTERM's own warning has said it
        raise SaveFailedError(
            f"training reached step {step}, but {ckpt.directory / str(step)} holds a damaged "
            f"checkpoint of that step, left as is, so step {step} was not saved (the newest "
            f"saved is step {last_saved}): move it aside and run again to save it")
    return {**reported, "step": step}


def _held_out_batch(config: ml_collections.ConfigDict, batch_sharding) -> dict | None:
    """One fixed test batch for a low-noise eval-loss curve (None if the split is small)."""
    batch_size = config.training.batch_size
    try:
        it = pipeline.make_eval_iterator(
            config.data, batch_size=batch_size, split="test",  # global, like training
            process_index=jax.process_index(), process_count=jax.process_count(),
        )
        first = next(iter(it))
    except (StopIteration, ValueError):  # no usable test split: no eval loss
        return None
    if not np.all(first["mask"]):
        return None
    return _global_batch(first, batch_sharding)


def _snapshot(family, sampler, state, step: int) -> tuple[np.ndarray, str]:
    """(picture, what it shows) of a snapshot step: a grid of EMA samples (2-D points: a
    scatter picture) or, for a style transfer model, fixed test pairs, a column each, with
    rows of content, style and result (`family.snapshot_rows`)."""
    if STYLIZE in family.capabilities:
        rows = family.snapshot_rows(family.sample_params(state))
        picture = images.make_grid(images.to_uint8(rows.reshape(-1, *rows.shape[2:])),
                                   ncol=rows.shape[1])
        return picture, "wrote the stylized grid (rows: content, style, result)"
    samples, nfe = sampler(family.sample_params(state), jax.random.PRNGKey(step))
    samples = jax.device_get(samples)
    if samples.ndim == 2:
        picture = images.points_picture(samples)
    else:
        picture = images.make_grid(images.to_uint8(samples))
    return picture, f"wrote sample grid ({int(nfe)} score evaluations)"


def describe(config: ml_collections.ConfigDict) -> str:
    """One line naming what a run trains, for logs."""
    return json.dumps({"family": config.model.family, "model": config.model.name,
                       "data": config.data.dataset, "sde": config.training.sde})
