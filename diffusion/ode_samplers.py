"""Probability-flow ODE samplers: Runge–Kutta with diffrax, adaptive or fixed-step ('ode'),
the fixed-step Euler and Heun methods ('euler', 'heun') on a uniform or EDM time grid, and
their flow-matching forms ('flow_euler', 'flow_heun': uniform in ``t``, few steps).

Every one starts from ``sde.prior_sampling(key, shape)`` and is then deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import numpy as np

from diffusion import edm
from diffusion.sampler_common import (
    ODE_SOLVERS,
    Sampler,
    ScoreFn,
    batch_t,
    choose,
    default_steps,
    integrate,
    tweedie_denoise,
)
from diffusion.sampler_common import time_grid as uniform_time_grid
from diffusion.sde_lib import SDE

Array = jax.Array

__all__ = [
    "ODE_SOLVERS",
    "ODE_TIME_GRIDS",
    "euler_sampler",
    "flow_euler_sampler",
    "flow_heun_sampler",
    "heun_sampler",
    "ode_sampler",
    "ode_time_grid",
]

def _probability_flow(sde: SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
    """``drift(x, t)`` of the probability-flow ODE, ``t`` a scalar."""
    reverse = sde.reverse(score_fn, probability_flow=True)
    return lambda x, t: reverse.sde(x, batch_t(t, x))[0]


def ode_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Sampler:
    """Probability-flow ODE from ``T`` to ``eps`` with diffrax, on device.

    ``steps=None`` (default): adaptive steps under a PID controller with ``rtol``/``atol``,
    at most ``max_steps`` attempts (more is a runtime error). ``steps=n``: ``n`` fixed,
    uniform steps of the same solver (tolerances unused). Options: ``solver`` in
    :data:`ODE_SOLVERS`, ``rtol``, ``atol``, ``max_steps``.

    nfe counts every stage of accepted and rejected steps: ``s - 1`` per attempt for an
    ``s``-stage FSAL solver, plus one first-stage evaluation per attempt made before the
    first acceptance, plus ``denoise``.
    """
    from diffusion import rk_solve

    diffrax = rk_solve.diffrax
    solver_obj = rk_solve.runge_kutta(solver)
    tableau = solver_obj.tableau
    if not tableau.fsal:  # the nfe bookkeeping below is for FSAL tableaus
        raise ValueError(f"ODE solver {solver!r} is not FSAL")
    evals_per_attempt = len(tableau.c)  # stages minus the reused first one
    if steps is None and not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    adaptive = steps is None
    if adaptive:
        controller = rk_solve.counting_pid(rtol, atol)
        dt0 = (eps - sde.T) / 100.0  # passed so that no probing evaluations are hidden
    else:
        controller = diffrax.StepTo(ts=np.linspace(sde.T, eps, steps + 1))
        dt0 = None

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int | Array]:
        x = sde.prior_sampling(key, shape)
        drift = _probability_flow(sde, score_fn)
        term = diffrax.ODETerm(lambda t, y, args: drift(y, t))
        solution = diffrax.diffeqsolve(
            term,
            solver_obj,
            t0=sde.T,
            t1=eps,
            dt0=dt0,
            y0=x,
            stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True, controller_state=adaptive),
            max_steps=max_steps if adaptive else steps,
        )
        x = solution.ys[0]
        if adaptive:
            first_attempts = solution.controller_state[1]
            nfe = first_attempts + evals_per_attempt * solution.stats["num_steps"]
        else:
            nfe = 1 + evals_per_attempt * steps
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
            nfe = nfe + 1
        return x, nfe

    return sampler


ODE_TIME_GRIDS = ("uniform", "edm")


def ode_time_grid(sde: SDE, steps: int, eps: float, kind: str, rho: float = 7.0) -> Array:
    """``steps + 1`` times from ``T`` to ``eps``: 'uniform' in ``t``, or 'edm' (EDM's noise
    levels, evenly spaced in ``sigma^(1/rho)``, mapped back to ``t``)."""
    if kind == "edm":
        return edm.edm_time_grid(sde, steps, eps, rho)
    return uniform_time_grid(sde, steps, eps)


def _fixed_step_ode(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    name: str,
    heun: bool,
    steps: int | None,
    default: int,
    eps: float,
    denoise: bool,
    time_grid: str,
    rho: float,
) -> Sampler:
    choose(f"{name} time grid", time_grid, ODE_TIME_GRIDS)
    if time_grid == "edm":
        edm.check_sigma_to_t(sde, f"{name} with time_grid='edm'")
        edm.check_rho(rho)
    steps = default_steps(steps, default)
    nfe = (2 if heun else 1) * steps + int(denoise)

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int]:
        drift = _probability_flow(sde, score_fn)

        def step(key: Array, x: Array, t: Array, t_next: Array) -> Array:
            del key
            h = t_next - t
            d = drift(x, t)
            if not heun:
                return x + h * d
            return x + h * 0.5 * (d + drift(x + h * d, t_next))

        x = sde.prior_sampling(key, shape)
        x = integrate(key, x, ode_time_grid(sde, steps, eps, time_grid, rho), step)
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
        return x, nfe

    return sampler


def euler_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    time_grid: str = "edm",
    rho: float = 7.0,
) -> Sampler:
    """Euler's method on the probability-flow ODE: ``steps`` (default ``sde.N``, being first
    order) fixed steps from ``T`` to ``eps``. Options: ``time_grid`` in
    :data:`ODE_TIME_GRIDS` and its ``rho`` (see :func:`ode_time_grid`; 'edm', the default,
    is the safer grid across SDEs, as for :func:`heun_sampler`).
    nfe = ``steps + denoise``.
    """
    return _fixed_step_ode(
        sde, shape, name="euler", heun=False, steps=steps, default=sde.N, eps=eps,
        denoise=denoise, time_grid=time_grid, rho=rho,
    )  # fmt: skip


def heun_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    time_grid: str = "edm",
    rho: float = 7.0,
) -> Sampler:
    """Heun's 2nd-order method (explicit trapezoid) on the probability-flow ODE in ``t``:
    ``steps`` (default 50) fixed steps from ``T`` to ``eps``, every one a full Heun step
    (the grid ends at ``eps > 0``, so no step needs EDM's final Euler step; the optional
    Tweedie denoising plays that part). Options: ``time_grid`` in :data:`ODE_TIME_GRIDS`
    and its ``rho`` (see :func:`ode_time_grid`). The default 'edm' grid is the safer one:
    on the Gaussian test problem 'uniform' is slightly better on VP/sub-VP but about twice
    as far off on VE, where uniform ``t`` wastes steps at high noise.
    nfe = ``2 * steps + denoise``.
    """
    return _fixed_step_ode(
        sde, shape, name="heun", heun=True, steps=steps, default=50, eps=eps,
        denoise=denoise, time_grid=time_grid, rho=rho,
    )  # fmt: skip


def flow_euler_sampler(
    sde: SDE, shape: tuple[int, ...], *, steps: int | None, eps: float, denoise: bool
) -> Sampler:
    """Rectified flow's sampler: Euler on the velocity ``dx/dt = v(x, t)`` (the
    probability-flow drift) over ``steps`` (default 20) uniform steps in ``t`` from ``T``
    to ``eps``; ``denoise`` ends with the step to ``t = 0`` (Tweedie's ``E[x0 | x]``, which
    on a flow path is the Euler step ``x - t v`` of the linear one). Any SDE.
    nfe = ``steps + denoise``.
    """
    return _fixed_step_ode(
        sde, shape, name="flow_euler", heun=False, steps=steps, default=20, eps=eps,
        denoise=denoise, time_grid="uniform", rho=7.0,
    )  # fmt: skip


def flow_heun_sampler(
    sde: SDE, shape: tuple[int, ...], *, steps: int | None, eps: float, denoise: bool
) -> Sampler:
    """Heun's method on the velocity over ``steps`` (default 10) uniform steps in ``t``
    from ``T`` to ``eps``, then ``denoise`` as :func:`flow_euler_sampler`. Any SDE.
    nfe = ``2 * steps + denoise``.
    """
    return _fixed_step_ode(
        sde, shape, name="flow_heun", heun=True, steps=steps, default=10, eps=eps,
        denoise=denoise, time_grid="uniform", rho=7.0,
    )  # fmt: skip
