"""Progressive distillation (Salimans & Ho, 2022): a student that in one deterministic DDIM
step does what its teacher does in two, halved round after round. Pure functions of a
score function and arrays: no family, no config.

On an SDE with marginals ``x_t = alpha x0 + sigma z``, a model at ``(x, t)`` stands for
``x0_hat = (x + sigma^2 score) / alpha`` (Tweedie) and ``z_hat = -sigma score``; DDIM's step
to ``s < t`` keeps ``z_hat``: ``x_s = alpha_s x0_hat + sigma_s z_hat``. On the grid
``t_i = T g(i / N)`` (``g`` a time spacing: ``u``, or DDIM's quadratic ``u^2``, which puts the
steps where a VP model's detail forms) the student's target at ``x_t = x_{t_i}`` is the
``x0`` that makes its one step ``t_i -> t_{i-1}`` land where the teacher's two steps
``t_i -> T g((i - 1/2) / N) -> t_{i-1}`` land (halving keeps every grid nested in the
next):

    x_tilde = (x'' - (sigma''/sigma) x_t) / (alpha'' - (sigma''/sigma) alpha)

so a student that predicts ``x_tilde`` exactly samples in ``N`` steps what the teacher
samples in ``2N`` from the same noise. The loss is ``max(SNR, 1) || x0_hat - x_tilde ||^2``
(the paper's truncated-SNR weighting) at ``i ~ U{1..N}``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from diffusion import sde_lib
from diffusion.losses import example_keys
from diffusion.sde_lib import SDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn


class Spacing(NamedTuple):
    """A time spacing: ``g``, the grid position ``u`` in [0, 1] to ``t / T``, and back."""

    to_time: Callable[[Array], Array]
    to_position: Callable[[Array], Array]


# progressive.time_spacing.
SPACINGS = {"uniform": Spacing(lambda u: u, lambda v: v),
            "quadratic": Spacing(lambda u: u * u, jnp.sqrt)}

__all__ = ["SPACINGS", "ddim_sample", "ddim_step", "distillation_loss",
           "distillation_target", "is_power_of_two", "step_times", "time_grid"]


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def _coefficients(sde: SDE, t: Array, x: Array) -> tuple[Array, Array]:
    return batch_broadcast(sde.marginal_scale(t), x), batch_broadcast(sde.marginal_std(t), x)


def _predict(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> tuple[Array, Array]:
    """(x0_hat, z_hat) of the model at ``(x, t)``, ``t`` ``(B,)``."""
    alpha, sigma = _coefficients(sde, t, x)
    score = score_fn(x, t)
    return (x + sigma**2 * score) / alpha, -sigma * score


def ddim_step(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, s: Array) -> Array:
    """DDIM's deterministic step from ``t`` to ``s`` (both ``(B,)``; ``s = 0`` gives
    ``x0_hat``). One score evaluation."""
    x0, z = _predict(sde, score_fn, x, t)
    alpha_s, sigma_s = _coefficients(sde, s, x)
    return alpha_s * x0 + sigma_s * z


def time_grid(sde: SDE, steps: int, spacing: str = "uniform") -> Array:
    """The ``steps + 1`` descending times ``T g(1) = T, ..., T g(0) = 0`` of a sampler."""
    return sde.T * SPACINGS[spacing].to_time(jnp.linspace(1.0, 0.0, steps + 1))


def step_times(sde: SDE, t: Array, steps: Array | int, spacing: str = "uniform"
               ) -> tuple[Array, Array]:
    """``(half, end)``: the teacher's midpoint and the end of a student's step from grid
    time ``t`` on the ``steps``-step grid."""
    g = SPACINGS[spacing]
    u = g.to_position(t / sde.T)
    return tuple(sde.T * g.to_time(jnp.maximum(u - back / steps, 0.0)) for back in (0.5, 1.0))


def ddim_sample(sde: SDE, score_fn: ScoreFn, key: Array, shape: tuple[int, ...],
                steps: int, spacing: str = "uniform") -> Array:
    """``steps`` DDIM steps on ``time_grid`` from ``T`` to 0, from ``sde``'s prior.
    nfe = ``steps``."""
    grid = time_grid(sde, steps, spacing)
    full = lambda v: jnp.full(shape[:1], v)

    def body(i: Array, x: Array) -> Array:
        return ddim_step(sde, score_fn, x, full(grid[i]), full(grid[i + 1]))

    return jax.lax.fori_loop(0, steps, body, sde.prior_sampling(key, shape))


def distillation_target(sde: SDE, teacher: ScoreFn, x: Array, t: Array, half: Array,
                        end: Array) -> Array:
    """``x_tilde`` (module docstring) at ``(x, t)`` for a student step ``t -> end``: the
    teacher's DDIM steps ``t -> half -> end`` (all ``(B,)``)."""
    x_end = ddim_step(sde, teacher, ddim_step(sde, teacher, x, t, half), half, end)
    alpha, sigma = _coefficients(sde, t, x)
    alpha_end, sigma_end = _coefficients(sde, end, x)
    ratio = sigma_end / sigma
    return (x_end - ratio * x) / (alpha_end - ratio * alpha)


def distillation_loss(sde: SDE, student: ScoreFn, teacher: ScoreFn, key: Array, x0: Array,
                      steps: Array | int, spacing: str = "uniform") -> Array:
    """The batch mean of ``max(SNR, 1) mean((x0_hat - x_tilde)^2)`` for a student of
    ``steps`` (may be traced) steps on ``time_grid``; each example draws its grid point
    and noise from its own key (``key`` ``(2,)`` or ``(B, 2)``)."""
    keys = jax.vmap(jax.random.split)(example_keys(key, x0.shape[0]))
    i = jax.vmap(lambda k: jax.random.randint(k, (), 1, steps + 1))(keys[:, 0])
    z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys[:, 1])
    g = SPACINGS[spacing].to_time
    t, half, end = (sde.T * g((i.astype(x0.dtype) - back) / steps) for back in (0.0, 0.5, 1.0))
    alpha, sigma = _coefficients(sde, t, x0)
    x_t = alpha * x0 + sigma * z
    target = jax.lax.stop_gradient(distillation_target(sde, teacher, x_t, t, half, end))
    predicted, _ = _predict(sde, student, x_t, t)
    snr = sde.marginal_scale(t) ** 2 / sde.marginal_std(t) ** 2
    error = jnp.mean(jnp.square(predicted - target), axis=tuple(range(1, x0.ndim)))
    return jnp.mean(jnp.maximum(snr, 1.0) * error)
