"""The training loop: thin, family-agnostic and resumable.

`run(config, workdir)` trains the family named by the config, resuming from the latest
checkpoint in `workdir`. Everything that varies by model lives in the family's
`init_state` / `train_step` / `eval_step` / `make_sampler`; this file only schedules them.
"""

import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from data import paths, pipeline
from errors import NonFiniteLossError
from training import accumulate, checkpoint, eval_hook, images, run_config, run_info, sharding
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.families import get_family
from training.families.base import STYLIZE
from training.families.request import SampleRequest
from training.monitor import Monitor
from training.sharding import state_shardings
from training.step import LeafStep

# Metrics that must stay finite; a NaN gradient norm means the next parameters are NaN.
_GUARDED_METRICS = ("loss", "grad_norm", "d_loss", "g_loss", "d_grad_norm", "g_grad_norm")


class _TerminationRequest:
    """Turns SIGTERM (preemption, `kill`) into a step at which every process saves and stops.

    One process: a Python handler sets a flag the loop checks between steps. Many processes:
    SIGTERM may reach only some hosts, yet a checkpoint is written by all of them together,
    so they must stop at the same step. jax.distributed's preemption service catches the
    signal on any host and agrees on a step that all reach (`reached_sync_point`, orbax's
    `CheckpointManager.reached_preemption`: a host-side check, well under a microsecond).
    A Python handler would replace the service's, so none is installed then.
    """

    def __init__(self, reached_sync_point: Callable[[int], bool]):
        self.requested = False
        self._reached_sync_point = reached_sync_point
        self._many_processes = jax.process_count() > 1
        self._previous = None

    def __enter__(self):
        if not self._many_processes and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def _handle(self, signum, frame):
        self.requested = True

    def check(self, step: int) -> bool:
        """Whether to save and stop after `step`; every process calls it once per step."""
        if self._many_processes and not self.requested:
            self.requested = self._reached_sync_point(step)
        return self.requested

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


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
        devices=None) -> dict[str, Any]:
    """Trains until `config.training.n_iters` steps, resuming from `workdir` if it can.

    `workdir` is a local path or a bucket (`gs://...`) that every host sees. Returns the
    last reported scalars plus `step`. Raises `UserError` subclasses for bad input (config,
    data, workdir) and `NonFiniteLossError` if training diverges.
    """
    workdir = paths.resolve(workdir)
    training = config.training
    is_chief = jax.process_index() == 0
    # A resumed run keeps the statistics it started with (its clusters, its VAE).
    family, mesh, batch_sharding = build(config, devices,
                                         checkpoint.saved_statistics(config, workdir))

    root_key = jax.random.PRNGKey(config.seed)
    abstract_state = jax.eval_shape(family.init_state, root_key)
    state_sh = state_shardings(abstract_state, mesh, config.sharding.rules)

    # Sample-quality metrics every eval_freq steps, if asked; bad settings fail here, early.
    sample_eval = (eval_hook.TrainingEvaluator(config, family)
                   if config.eval.metrics_during_training else None)
    train_iter = pipeline.make_train_iterator(
        config.data, global_batch_size=training.batch_size, seed=config.seed,
        process_index=jax.process_index(), process_count=jax.process_count(),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = Checkpointer(workdir, config)
    start_step = ckpt.latest_step()
    if start_step is not None:
        state, data_state = ckpt.restore(
            start_step, abstract_with_shardings(abstract_state, state_sh)
        )
        train_iter.set_state(data_state)
        logging.info("Resuming from checkpoint step %d in %s", start_step, ckpt.directory)
    else:
        start_step = 0
        # Built eagerly and then placed: compiling the initialisers of a large network as
        # one program costs more than running them (CIFAR-10 DDPM++: 20 s against 3 s).
        state = sharding.place(family.init_state(root_key), state_sh)
        if is_chief:
            (workdir / run_config.CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))
        logging.info("Starting from scratch in %s: %s", workdir, describe(config))
    run_info.log_start(config, mesh, state)
    last_saved = start_step if start_step > 0 else None

    if start_step >= training.n_iters:
        logging.info("Step %d already reaches training.n_iters=%d: nothing to do",
                     start_step, training.n_iters)
        ckpt.close()
        return {"step": start_step}

    train_step = LeafStep(family.train_step, state, state_sh, batch_sharding,
                          sharding.replicated(mesh))
    as_state = train_step.state
    leaves = train_step.leaves(state)
    del state  # donated at the first step: only `leaves` is live
    eval_step = jax.jit(family.eval_step, out_shardings=sharding.replicated(mesh))
    eval_batch = _held_out_batch(config, batch_sharding)
    eval_key = jax.random.PRNGKey(config.seed + 1)
    snapshot_sampler = None

    monitor = Monitor(workdir, total_steps=training.n_iters, start_step=start_step,
                      global_batch=training.batch_size, enabled=is_chief)
    metrics = _MetricBuffer()
    reported: dict[str, float] = {}
    step = start_step
    try:
        with _TerminationRequest(ckpt.reached_preemption) as termination:
            while step < training.n_iters:
                batch = _global_batch(next(train_iter), batch_sharding)
                leaves, step_metrics = train_step(leaves, batch)
                step += 1
                stopping = termination.check(step)
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
                    ckpt.save(step, as_state(leaves), train_iter.get_state(),
                              family.statistics)
                    last_saved = step
                if snapshot and training.snapshot_sampling and STYLIZE in family.capabilities:
                    _write_stylized(family, as_state(leaves), step, workdir, monitor, is_chief)
                elif snapshot and training.snapshot_sampling:
                    if snapshot_sampler is None:
                        snapshot_sampler = family.make_sampler(
                            SampleRequest(training.num_snapshot_samples))
                    _write_samples(family, snapshot_sampler, as_state(leaves), step, workdir,
                                   monitor, is_chief)
                if snapshot:
                    monitor.reset_timer(step)  # steps/s measures training, not sampling
                if stopping:
                    logging.warning("SIGTERM: saved checkpoint at step %d and stopped", step)
                    break
    finally:
        ckpt.close()
        monitor.close()
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


def _write_samples(family, sampler, state, step: int, workdir: epath.Path, monitor: Monitor,
                   is_chief: bool) -> None:
    samples, nfe = sampler(family.sample_params(state), jax.random.PRNGKey(step))
    samples = jax.device_get(samples)
    if samples.ndim == 2:
        picture = images.points_picture(samples)
    else:
        picture = images.make_grid(images.to_uint8(samples))
    if is_chief:
        images.save_png(workdir / "samples" / f"step_{step:07d}.png", picture)
        monitor.image(step, "samples", picture)
        logging.info("step %d: wrote sample grid (%d score evaluations)", step, int(nfe))


def _write_stylized(family, state, step: int, workdir: epath.Path, monitor: Monitor,
                    is_chief: bool) -> None:
    """A style transfer model's snapshot: fixed test pairs, a column each, with rows of
    content, style and result (`family.snapshot_rows`)."""
    rows = family.snapshot_rows(family.sample_params(state))
    picture = images.make_grid(images.to_uint8(rows.reshape(-1, *rows.shape[2:])),
                               ncol=rows.shape[1])
    if is_chief:
        images.save_png(workdir / "samples" / f"step_{step:07d}.png", picture)
        monitor.image(step, "samples", picture)
        logging.info("step %d: wrote the stylized grid (rows: content, style, result)", step)


def describe(config: ml_collections.ConfigDict) -> str:
    """One line naming what a run trains, for logs."""
    return json.dumps({"family": config.model.family, "model": config.model.name,
                       "data": config.data.dataset, "sde": config.training.sde})
