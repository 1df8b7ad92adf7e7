"""Log-likelihoods of data under the probability-flow ODE (score_sde, Sec. D.2).

The probability flow dx/dt = f~(x, t) carries p_0 to p_T, so, integrating the
instantaneous change of variables from ``eps`` to ``T``,

    log p_eps(x) = log p_T(x_T) + integral_eps^T div f~(x_t, t) dt.

``get_likelihood_fn(sde, ...)`` returns a pure ``likelihood_fn(key, score_fn, x) ->
(logp, z, nfe)``: log-density in nats per example (B,) of data ``x`` in the model's data
space, the latent ``x_T``, and the number of evaluations of the ODE's right-hand side
(each costs one score evaluation plus its Jacobian-vector products). The divergence is
either exact (one JVP per data dimension: exact and expensive) or Hutchinson's unbiased
estimate with ``num_probes`` probes v_1..v_M fixed for the whole solve,

    div f~ ~= (1/M) sum_m v_m^T J v_m,    E[v v^T] = I,

one batched JVP (the network runs once, its linearisation M times); M probes divide the
variance of the estimate by M. :func:`log_likelihood` is the one-call convenience.

For 8-bit data, :func:`dequantized_log_likelihood` bounds the log-probability of the
integer data k by importance-weighted dequantization with K uniform samples u_k,

    log P(k) >= E[log (1/K) sum_k p(x(k + u_k))] + D log |dx/dk|,

which is the uniform-dequantization bound E[log p(x(k + u))] for K = 1 and increases
monotonically to log P(k) as K grows (Burda et al. 2016; Ho et al. 2019, Flow++).
:func:`bits_per_dim` turns such log-densities into bits/dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import sde_lib
from diffusion.sampler_common import ODE_SOLVERS
from diffusion.sde_lib import SDE

Array = jax.Array
LikelihoodFn = Callable[[Array, sde_lib.ScoreFn, Array], tuple[Array, Array, Array]]


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _hutchinson_divergence(
    f: Callable[[Array], Array], x: Array, probes: Array
) -> tuple[Array, Array]:
    """f(x) and (1/M) sum_m v_m^T J v_m for the probes ``(M, *x.shape)``.

    Each term has expectation tr J whenever E[v v^T] = I, so the mean is unbiased with 1/M
    of the variance of one probe. f runs once; its linearisation is vmapped over the probes.
    """
    if probes.shape[0] == 1:
        out, jvp = jax.jvp(f, (x,), (probes[0],))
        return out, _sum_non_batch(jvp * probes[0])
    out, f_jvp = jax.linearize(f, x)
    jvps = jax.vmap(f_jvp)(probes)  # (M, B, ...)
    quad = jnp.sum(jvps * probes, axis=tuple(range(2, probes.ndim)))  # (M, B)
    return out, jnp.mean(quad, axis=0)


def _exact_divergence(
    f: Callable[[Array], Array], x: Array, probes: Array
) -> tuple[Array, Array]:
    """f(x) and the trace of the per-example Jacobian, one JVP per data dimension."""
    del probes
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
    num_probes: int = 1,
) -> LikelihoodFn:
    """``likelihood_fn(key, score_fn, x) -> (logp (B,), z (B, ...), nfe)``, adaptive ODE.

    ``divergence`` in :data:`DIVERGENCES`; ``key`` draws the ``num_probes`` Hutchinson
    probes (M of them: the divergence is their mean of v^T J v; the exact divergence takes
    none, so M must be 1 there). ``eps`` is the start time (score_sde uses 1e-5). The solve
    is one diffrax ``diffeqsolve`` with a PID controller at ``rtol``/``atol`` over the joint
    state (x, log-density change); the step sizes are shared by the batch.
    """
    if divergence not in DIVERGENCES:
        raise ValueError(f"unknown divergence {divergence!r}; known: {sorted(DIVERGENCES)}")
    if isinstance(num_probes, bool) or int(num_probes) != num_probes or num_probes < 1:
        raise ValueError(f"num_probes must be a positive integer, got {num_probes!r}")
    num_probes = int(num_probes)
    if divergence == "exact" and num_probes != 1:
        raise ValueError(
            f"num_probes={num_probes} applies to the Hutchinson divergences; 'exact' takes none"
        )
    if solver not in ODE_SOLVERS:
        raise ValueError(f"unknown ODE solver {solver!r}; known: {sorted(ODE_SOLVERS)}")
    if not (0 < eps < sde.T):
        raise ValueError(f"eps must be in (0, T={sde.T}), got {eps}")
    probe_kind, div_fn = DIVERGENCES[divergence]
    from diffusion import rk_solve

    diffrax = rk_solve.diffrax
    solver_obj = rk_solve.runge_kutta(solver)
    evals_per_attempt = len(solver_obj.tableau.c)

    def likelihood_fn(key: Array, score_fn: sde_lib.ScoreFn, x: Array) -> tuple:
        flow = sde.reverse(score_fn, probability_flow=True)
        x = jnp.asarray(x, jnp.float32)
        # (M, *x.shape); for M = 1 the same values as a single probe drawn with this key.
        probes = _probe(probe_kind, key, (num_probes, *x.shape))

        def rhs(t: Array, state: tuple[Array, Array], args: None) -> tuple[Array, Array]:
            x_t, _ = state
            t_batch = jnp.full(x_t.shape[:1], t, x_t.dtype)
            return div_fn(lambda y: flow.sde(y, t_batch)[0], x_t, probes)

        solution = diffrax.diffeqsolve(
            diffrax.ODETerm(rhs),
            solver_obj,
            t0=eps,
            t1=sde.T,
            dt0=(sde.T - eps) / 100.0,
            y0=(x, jnp.zeros(x.shape[:1], x.dtype)),
            stepsize_controller=rk_solve.counting_pid(rtol, atol),
            saveat=diffrax.SaveAt(t1=True, controller_state=True),
            max_steps=max_steps,
        )
        z, delta_logp = solution.ys[0][0], solution.ys[1][0]
        nfe = solution.controller_state[1] + evals_per_attempt * solution.stats["num_steps"]
        return sde.prior_logp(z) + delta_logp, z, nfe

    return likelihood_fn


def log_likelihood(
    sde: SDE, score_fn: sde_lib.ScoreFn, x: Array, key: Array, **options
) -> tuple[Array, Array]:
    """``(logp nats (B,), nfe)`` of ``x`` under the probability-flow ODE of ``score_fn``.

    The one-call form of :func:`get_likelihood_fn`; ``options`` are its keyword arguments
    (``divergence``, ``eps``, ``solver``, ``rtol``, ``atol``, ``max_steps``,
    ``num_probes``). Builds the solve at every call: wrap it in ``jax.jit`` (with the
    options bound) or keep a :func:`get_likelihood_fn` to evaluate many batches.
    """
    logp, _, nfe = get_likelihood_fn(sde, **options)(key, score_fn, x)
    return logp, nfe


def dequantize(key: Array, images: Array, *, centered: bool) -> Array:
    """Uniform dequantization of 8-bit ``images``: ``(k + u) / 256``, u ~ U[0, 1)^D, then
    ``2 x - 1`` when ``centered`` (the data pipeline's ``uniform_dequantization``)."""
    k = jnp.asarray(images, jnp.float32)
    x = (k + jax.random.uniform(key, k.shape, jnp.float32)) / 256.0
    return 2.0 * x - 1.0 if centered else x


def importance_weighted_logp(logps: Array) -> Array:
    """``log (1/K) sum_k exp(logps[k])`` over the leading axis: (K, B) -> (B,).

    With ``logps[k] = log p(x(k + u_k))`` for K independent uniform dequantizations, this
    is the importance-weighted bound on log P(k) (minus the D log |dx/dk| that
    :func:`bits_per_dim` adds); K = 1 returns ``logps[0]`` unchanged. By Jensen it is at
    least ``mean_k logps[k]``.
    """
    logps = jnp.asarray(logps)
    if logps.shape[0] == 1:
        return logps[0]
    return jax.scipy.special.logsumexp(logps, axis=0) - math.log(logps.shape[0])


def dequantized_log_likelihood(
    log_likelihood_fn: Callable[[Array, Array], tuple[Array, Array]],
    key: Array,
    images: Array,
    *,
    centered: bool,
    num_dequant_samples: int = 1,
) -> tuple[Array, Array]:
    """Importance-weighted dequantization: ``(logp (B,), nfe)`` for 8-bit ``images``.

    ``log_likelihood_fn(key, x) -> (logp (B,), nfe)`` is the model's log-density of
    continuous data ``x`` in its data space (e.g. ``functools.partial`` of
    :func:`log_likelihood` with the key moved first). With K = ``num_dequant_samples``,
    independent u_1..u_K ~ U[0, 1)^D (each with its own probe key), the estimate is

        log (1/K) sum_k p(x(k + u_k)),   x(y) = y / 256 (or 2 y / 256 - 1 when centered),

    whose expectation is a lower bound on log P(k) - D log |dx/dk| that tightens with K
    (Burda et al. 2016); K = 1 is the usual uniform-dequantization bound. Pass the result
    to :func:`bits_per_dim`. The bound holds for exact log-densities: a Hutchinson
    divergence makes each log p(.) noisy (unbiased in log p, not in p), which biases the
    log-mean-exp upwards for K > 1; use the exact divergence or several probes to keep it
    small. ``nfe`` sums the K solves. The K solves run one after the other (``lax.map``).
    """
    if isinstance(num_dequant_samples, bool) or int(num_dequant_samples) != num_dequant_samples \
            or num_dequant_samples < 1:
        raise ValueError(
            f"num_dequant_samples must be a positive integer, got {num_dequant_samples!r}"
        )

    def one(sample_key: Array) -> tuple[Array, Array]:
        noise_key, probe_key = jax.random.split(sample_key)
        return log_likelihood_fn(probe_key, dequantize(noise_key, images, centered=centered))

    keys = jax.random.split(key, int(num_dequant_samples))
    logps, nfes = jax.lax.map(one, keys)
    return importance_weighted_logp(logps), jnp.sum(nfes)


def bits_per_dim(logp: Array | np.ndarray, shape: tuple[int, ...], *, centered: bool) -> Array:
    """Bits/dim of 8-bit data from log-densities of its dequantized, scaled version.

    The model sees x = (k + u) / 256 (u ~ U[0, 1)), times 2 minus 1 when ``centered``; the
    density of the integer-valued k + u on [0, 256)^D is p(x) (1/256)^D, or (2/256)^D
    centred, hence the offset of 8 (or 7) bits per dimension.
    """
    dim = math.prod(shape)
    offset = 7.0 if centered else 8.0
    return -jnp.asarray(logp) / (dim * math.log(2.0)) + offset
