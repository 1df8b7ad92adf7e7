"""Gradient accumulation: one optimizer update from k micro-batches of the global batch.

Micro-batch i holds the rows i, i + k, i + 2k, ... of the global batch. The batch is split
over the devices in contiguous blocks, so these strided rows keep every device's share of
every micro-batch on that device: cutting the batch moves no data between devices.

The mean of the k micro-batch losses (and gradients) is the full-batch mean, since every
micro-batch holds B / k examples: with the same per-example randomness the accumulated
update equals the full-batch one up to float rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from errors import UserError


def check_accumulation(batch_size: int, steps: int, devices: int = 1) -> None:
    """UserError unless the global batch cuts into `steps` micro-batches over `devices`."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"training.grad_accum_steps must be a positive int, got {steps!r}")
    if batch_size % (steps * devices):
        raise UserError(
            f"training.batch_size={batch_size} does not split into "
            f"training.grad_accum_steps={steps} micro-batches over {devices} devices "
            f"(it must be a multiple of {steps * devices})"
        )


def split(tree: Any, steps: int) -> Any:
    """Every (B, ...) leaf as (steps, B / steps, ...): micro-batch i is rows i::steps."""

    def cut(a: jax.Array) -> jax.Array:
        return jnp.swapaxes(a.reshape(a.shape[0] // steps, steps, *a.shape[1:]), 0, 1)

    return jax.tree.map(cut, tree)


def merge(tree: Any) -> Any:
    """The inverse of :func:`split`: (steps, B / steps, ...) leaves back to (B, ...)."""

    def join(a: jax.Array) -> jax.Array:
        return jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])

    return jax.tree.map(join, tree)


def value_and_grad(
    objective: Callable[[Any, Any, jax.Array], tuple[jax.Array, Any]],
    params: Any,
    inputs: Any,
    steps: int,
) -> tuple[tuple[jax.Array, Any], Any]:
    """`((loss, aux), grads)` of `objective(params, inputs, index) -> (loss, aux)`, averaged
    over `steps` micro-batches of `inputs` (a pytree of (B, ...) arrays).

    `index` is the micro-batch number (0 without accumulation), for randomness that is not
    drawn per example. Scalar `aux` leaves are averaged; per-example leaves ((B / steps,
    ...)) come back as (B, ...) in the original order.
    """
    grad_fn = jax.value_and_grad(objective, has_aux=True)
    if steps == 1:
        return grad_fn(params, inputs, jnp.zeros((), jnp.int32))

    def body(grads_sum, micro):
        index, micro_inputs = micro
        (loss, aux), grads = grad_fn(params, micro_inputs, index)
        return jax.tree.map(jnp.add, grads_sum, grads), (loss, aux)

    zeros = jax.tree.map(jnp.zeros_like, params)
    grads_sum, (losses, auxes) = jax.lax.scan(
        body, zeros, (jnp.arange(steps), split(inputs, steps))
    )
    grads = jax.tree.map(lambda g: g / steps, grads_sum)
    aux = jax.tree.map(lambda a: jnp.mean(a, axis=0) if a.ndim == 1 else merge(a), auxes)
    return (jnp.mean(losses), aux), grads
