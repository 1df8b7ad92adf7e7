"""Log-likelihoods of data under the probability-flow ODE (score_sde, Sec. D.2).

The probability flow dx/dt = f~(x, t) carries p_0 to p_T, so, integrating the
instantaneous change of variables from ``eps`` to ``T``,

    log p_eps(x) = log p_T(x_T) + integral_eps^T div f~(x_t, t) dt.

``get_likelihood_fn(sde, ...)`` returns a pure ``likelihood_fn(key, score_fn, x) ->
(logp, z, nfe)``: log-density in nats per example (B,) of data ``x`` in the model's data
space, the latent ``x_T``, and the number of evaluations of the ODE's right-hand side
(each costs one score evaluation plus its Jacobian-vector products). The divergence is
either exact (one JVP per data dimension: exact and expensive) or Hutchinson's unbiased
estimate with one probe fixed for the whole solve (one JVP).

:func:`bits_per_dim` turns log-densities of dequantized 8-bit data into bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion import sde_lib
from diffusion.sampling import ODE_SOLVERS, CountingPID
from diffusion.sde_lib import SDE

Array = jax.Array
LikelihoodFn = Callable[[Array, sde_lib.ScoreFn, Array], tuple[Array, Array, Array]]


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _hutchinson_divergence(
    f: Callable[[Array], Array], x: Array, probe: Array
) -> tuple[Array, Array]:
    """f(x) and v^T J v for the probe v: E[v^T J v] = tr J whenever E[v v^T] = I."""
    out, jvp = jax.jvp(f, (x,), (probe,))
    return out, _sum_non_batch(jvp * probe)


def _exact_divergence(
    f: Callable[[Array], Array], x: Array, probe: Array
) -> tuple[Array, Array]:
    """f(x) and the trace of the per-example Jacobian, one JVP per data dimension."""
    del probe
    dim = math.prod(x.shape[1:])
    basis = jnp.eye(dim, dtype=x.dtype).reshape(dim, 1, *x.shape[1:])

    def diagonal_part(e: Array) -> Array:
        _, jvp = jax.jvp(f, (x,), (jnp.broadcast_to(e, x.shape),))
        return _sum_non_batch(jvp * e)

    trace = jnp.sum(jax.lax.map(diagonal_part, basis, batch_size=min(dim, 64)), axis=0)
    return f(x), trace


# name -> (probe distribution, divergence(f, x, probe)). Rademacher probes give the
# lower-variance Hutchinson estimate.
DIVERGENCES: dict[str, tuple[str | None, Callable]] = {
    "hutchinson_rademacher": ("rademacher", _hutchinson_divergence),
    "hutchinson_gaussian": ("gaussian", _hutchinson_divergence),
    "exact": (None, _exact_divergence),
}


def _probe(kind: str | None, key: Array, shape: tuple[int, ...]) -> Array:
    if kind == "rademacher":
        return jax.random.rademacher(key, shape, jnp.float32)
    if kind == "gaussian":
        return jax.random.normal(key, shape, jnp.float32)
    return jnp.zeros(shape, jnp.float32)


def get_likelihood_fn(
    sde: SDE,
    *,
    divergence: str = "hutchinson_rademacher",
    eps: float = 1e-5,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> LikelihoodFn:
    """``likelihood_fn(key, score_fn, x) -> (logp (B,), z (B, ...), nfe)``, adaptive ODE.

    ``divergence`` in :data:`DIVERGENCES`; ``key`` draws the Hutchinson probe. ``eps`` is
    the start time (score_sde uses 1e-5). The solve is one diffrax ``diffeqsolve`` with a
    PID controller at ``rtol``/``atol`` over the joint state (x, log-density change); the
    step sizes are shared by the batch.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; known: {sorted(DIVERGENCES)}")
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; known: {sorted(ODE_SOLVERS)}")
    if not (0 < eps < sde.T):
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    probe_kind, div_fn = DIVERGENCES[divergence]
    solver_obj = ODE_SOLVERS[solver]()
    evals_per_attempt = len(solver_obj.tableau.c)

    def likelihood_fn(key: Array, score_fn: sde_lib.ScoreFn, x: Array) -> tuple:
        flow = sde.reverse(score_fn, probability_flow=True)
        x = jnp.asarray(x, jnp.float32)
        probe = _probe(probe_kind, key, x.shape)

        def rhs(t: Array, state: tuple[Array, Array], args: None) -> tuple[Array, Array]:
            x_t, _ = state
            t_batch = jnp.full(x_t.shape[:1], t, x_t.dtype)
            return div_fn(lambda y: flow.sde(y, t_batch)[0], x_t, probe)

        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            solver_obj,
            t0=eps,
            t1=sde.T,
            dt0=(sde.T - eps) / 100.0,
            y0=(x, jnp.zeros(x.shape[:1], x.dtype)),
            stepsize_controller=CountingPID(diffrax.PIDController(rtol=rtol, atol=atol)),
            saveat=diffrax.SaveAt(t1=True, controller_state=True),
            max_steps=max_steps,
        )
        z, delta_logp = solution.ys[0][0], solution.ys[1][0]
        nfe = solution.controller_state[1] + evals_per_attempt * solution.stats["num_steps"]
        return sde.prior_logp(z) + delta_logp, z, nfe

    return likelihood_fn


def bits_per_dim(logp: Array | np.ndarray, shape: tuple[int, ...], *, centered: bool) -> Array:
    """Bits/dim of 8-bit data from log-densities of its dequantized, scaled version.

    The model sees x = (k + u) / 256 (u ~ U[0, 1)), times 2 minus 1 when ``centered``; the
    density of the integer-valued k + u on [0, 256)^D is p(x) (1/256)^D, or (2/256)^D
    centred, hence the offset of 8 (or 7) bits per dimension.
    """
    dim = math.prod(shape)
    offset = 7.0 if centered else 8.0
    return -jnp.asarray(logp) / (dim * math.log(2.0)) + offset
