"""Gradient penalties of the discriminator and StyleGAN2's lazy regularisation.

R1 (Mescheder et al. 2018) penalises the squared norm of the discriminator's input
gradient on real data, R2 the same on generated data; both vanish at an equilibrium
where D is flat on the data, and R1 + R2 make the relativistic loss converge locally
(Huang et al. 2024). They return ``mean_i ||grad_x D(x)_i||^2`` without the usual
``gamma / 2`` weight, which the caller applies.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

Array = jax.Array
DiscriminatorFn = Callable[[Array], Array]

__all__ = ["lazy_penalty", "r1_penalty", "r2_penalty"]


def _input_gradient_penalty(d_fn: DiscriminatorFn, x: Array) -> Array:
    # The penalty regularises D only: no gradient reaches x (or a generator behind it).
    x = jax.lax.stop_gradient(x)
    # Logit i depends on x_i alone, so the gradient of the sum is the per-example gradient
    # in one backward pass. (Batch-coupled layers such as batch norm break this.)
    grads = jax.grad(lambda v: jnp.sum(d_fn(v)))(x)
    return jnp.mean(jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim))))


def r1_penalty(d_fn: DiscriminatorFn, real_x: Array) -> Array:
    """R1: ``mean_i ||grad_x d_fn(x)_i||^2`` at the real batch ``real_x (B, ...)``.

    ``d_fn(x (B, ...)) -> logits (B,)`` closes over the discriminator's parameters, so
    differentiating the penalty with respect to them is a double backward pass. ``d_fn``
    must treat examples independently (no batch statistics).
    """
    return _input_gradient_penalty(d_fn, real_x)


def r2_penalty(d_fn: DiscriminatorFn, fake_x: Array) -> Array:
    """R2: :func:`r1_penalty` at generated data ``fake_x``; no gradient flows into it."""
    return _input_gradient_penalty(d_fn, fake_x)


def lazy_penalty(step: Array | int, interval: int, penalty_fn: Callable[[], Array]) -> Array:
    """Lazy regularisation (Karras et al. 2020, StyleGAN2): ``interval * penalty_fn()``
    when ``step % interval == 0``, else zeros of its shape.

    Scaling by ``interval`` keeps the expected weight of the penalty that of applying it
    every step. ``step`` may be traced; ``interval`` is a Python int (1 = every step). The
    branch is a ``jax.lax.cond``, so off steps skip the penalty's double backward pass
    (under ``vmap`` with a batched ``step`` both branches run).
    """
    if isinstance(interval, bool) or int(interval) != interval or interval <= 0:
        raise ValueError(f"interval must be a positive integer, got {interval!r}")
    interval = int(interval)
    if interval == 1:
        return penalty_fn()
    out = jax.eval_shape(penalty_fn)
    return jax.lax.cond(
        jnp.asarray(step) % interval == 0,
        lambda: (interval * penalty_fn()).astype(out.dtype),
        lambda: jnp.zeros(out.shape, out.dtype),
    )
