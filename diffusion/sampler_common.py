"""The pieces every sampler family shares: the uniform :func:`time_grid`, the ``(B,)`` time
of a score call (:func:`batch_t`), Tweedie's :func:`tweedie_denoise`, the compiled loop over
a grid (:func:`integrate`), registry look-up (:func:`choose`) and the sampler types.

The families themselves live in :mod:`diffusion.sde_samplers`, :mod:`diffusion.ode_samplers`,
:mod:`diffusion.edm` and :mod:`diffusion.dpm_solver`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion import sde_lib
from diffusion.sde_lib import SDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Sampler = Callable[[Array, ScoreFn], tuple[Array, int | Array]]
SamplerFactory = Callable[..., Sampler]

__all__ = [
    "ODE_SOLVERS",
    "Sampler",
    "SamplerFactory",
    "batch_t",
    "choose",
    "default_steps",
    "integrate",
    "time_grid",
    "tweedie_denoise",
]


# The Runge-Kutta solvers of the adaptive probability-flow solves (diffusion/rk_solve.py,
# imported on use); FSAL tableaus, as the 'ode' sampler's nfe bookkeeping assumes.
ODE_SOLVERS = ("tsit5", "dopri5")


def time_grid(sde: SDE, steps: int, eps: float) -> Array:
    """``steps + 1`` uniformly spaced times from ``sde.T`` down to ``eps``."""
    return jnp.linspace(sde.T, eps, steps + 1)


def batch_t(t: Array | float, x: Array) -> Array:
    """A scalar time as the ``(B,)`` array score functions take."""
    return jnp.full(x.shape[:1], t, x.dtype)


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array | float) -> Array:
    """Posterior mean ``E[x_0 | x_t] = (x + std^2 score) / scale`` (Tweedie's formula).

    For VE this is ``x + sigma^2 score``; for VP it is the noise-free reverse-diffusion step
    over ``[0, t]`` with DDPM's first-order ``1/sqrt(alpha) ~ 2 - sqrt(alpha)`` made exact.
    One score evaluation.
    """
    t_b = batch_t(t, x)
    std = sde.marginal_std(t_b)
    x0 = x + batch_broadcast(std**2, x) * score_fn(x, t_b)
    return x0 / batch_broadcast(sde.marginal_scale(t_b), x)


def integrate(
    key: Array, x: Array, grid: Array, step: Callable[[Array, Array, Array, Array], Array]
) -> Array:
    """``x <- step(key_i, x, grid[i], grid[i+1])`` for every interval, in a compiled loop."""

    def body(i: Array, x: Array) -> Array:
        return step(jax.random.fold_in(key, i), x, grid[i], grid[i + 1])

    return jax.lax.fori_loop(0, grid.shape[0] - 1, body, x)


def choose(kind: str, name: str, registry: dict[str, Any] | tuple[str, ...]) -> Any:
    """``registry[name]`` (or ``name`` itself for a tuple of names), else a ValueError that
    lists the known names."""
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    return registry[name] if isinstance(registry, dict) else name


def default_steps(steps: int | None, default: int) -> int:
    return default if steps is None else steps
