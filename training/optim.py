"""Optimizer from `config.optim`: score_sde's Adam with linear warm-up (then constant, or
cosine decay to 0) and global-norm clipping, as one optax chain."""

import ml_collections
import optax

from errors import UserError


def _adam(optim: ml_collections.ConfigDict, lr: optax.Schedule) -> optax.GradientTransformation:
    return optax.adamw(
        lr, b1=optim.beta1, b2=optim.get("beta2", 0.999), eps=optim.eps,
        weight_decay=optim.weight_decay,
    )


OPTIMIZERS = {"Adam": _adam, "AdamW": _adam}


def _constant(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up from 0 to `lr` over `warmup` steps, then constant (score_sde)."""
    if optim.warmup > 0:
        return optax.linear_schedule(0.0, optim.lr, transition_steps=optim.warmup)
    return optax.constant_schedule(optim.lr)


def _cosine(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """Linear warm-up, then cosine decay to 0 at `total_steps` (training.n_iters)."""
    if total_steps <= optim.warmup:
        raise UserError(
            f"optim.schedule='cosine' needs training.n_iters ({total_steps}) > optim.warmup "
            f"({optim.warmup})"
        )
    return optax.warmup_cosine_decay_schedule(
        0.0, optim.lr, warmup_steps=optim.warmup, decay_steps=total_steps, end_value=0.0
    )


SCHEDULES = {"constant": _constant, "cosine": _cosine}


def learning_rate_schedule(optim: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
    """The `optim.schedule` learning rate over a run of `total_steps` steps."""
    if optim.schedule not in SCHEDULES:
        raise UserError(
            f"config.optim.schedule={optim.schedule!r} is not one of {sorted(SCHEDULES)}"
        )
    return SCHEDULES[optim.schedule](optim, total_steps)


def make_optimizer(
    optim: ml_collections.ConfigDict, total_steps: int
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns the optimizer and its learning-rate schedule (for logging)."""
    if optim.optimizer not in OPTIMIZERS:
        raise UserError(
            f"config.optim.optimizer={optim.optimizer!r} is not one of {sorted(OPTIMIZERS)}"
        )
    schedule = learning_rate_schedule(optim, total_steps)
    parts = []
    if optim.grad_clip > 0:
        parts.append(optax.clip_by_global_norm(optim.grad_clip))
    parts.append(OPTIMIZERS[optim.optimizer](optim, schedule))
    return optax.chain(*parts), schedule
