"""Consistency models (Song et al., 2023; the improved training of Song & Dhariwal, 2024):
the consistency parametrisation, the discretisation and its curriculum, the distillation
and training losses, and multistep consistency sampling. Pure functions of arrays and
callables: no family, no config.

Everything lives in EDM's variance-exploding form ``x = x0 + sigma z`` (``x_hat = x / s(t)``
of a score SDE, ``sigma = edm.edm_sigma(sde, t)``). A consistency function maps any point of
a probability-flow trajectory to its end at ``sigma_min``:

    f(x, sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x, c_noise(sigma))
    c_skip = sigma_data^2 / ((sigma - sigma_min)^2 + sigma_data^2)
    c_out  = (sigma - sigma_min) sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)

At ``sigma = sigma_min`` the floats are ``c_skip = 1`` and ``c_out = 0`` exactly, so the
boundary condition ``f(x, sigma_min) = x`` holds bit for bit whatever the network says.

Training compares the student at ``sigma_{n+1}`` with the (stop-gradient) target network
at ``sigma_n``, on adjacent levels of the grid ``sigma_min = sigma_0 < ... < sigma_{N-1} =
sigma_max`` (rho-spaced, EDM eq. 5). Distillation (CD) reaches ``x_{sigma_n}`` from
``x_{sigma_{n+1}} = x0 + sigma_{n+1} z`` by one ODE step of a teacher's denoiser; training
(CT) uses ``x0 + sigma_n z`` with the same ``z``, the one-sample estimate of that step.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion.losses import example_keys
from diffusion.sde_lib import batch_broadcast

Array = jax.Array
# f(x, sigma) with sigma (B,): a consistency function, or a denoiser D(x, sigma).
SigmaFn = Callable[[Array, Array], Array]
NetFn = Callable[[Array, Array], Array]

__all__ = [
    "DISTANCES",
    "NOISE_LEVELS",
    "SOLVERS",
    "WEIGHTINGS",
    "consistency_fn",
    "consistency_loss",
    "denoiser_consistency_fn",
    "intervals_at",
    "karras_grid",
    "levels_for",
    "multistep_sample",
    "parse_levels",
    "sampling_sigmas",
    "skip_out",
]


def karras_grid(sigma_min: float, sigma_max: float, intervals: Array | int, rho: float,
                size: int | None = None) -> Array:
    """Ascending noise levels ``sigma_0 = sigma_min .. sigma_intervals = sigma_max``, evenly
    spaced in ``sigma^(1/rho)``. ``intervals`` may be traced; ``size`` (>= intervals + 1)
    pads the result with ``sigma_max`` to a static length."""
    size = int(intervals) + 1 if size is None else size
    i = jnp.arange(size, dtype=jnp.float32)
    ramp = jnp.minimum(i / intervals, 1.0)
    lo, hi = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
    grid = (lo + ramp * (hi - lo)) ** rho
    # The ends exactly: sigma_min is where the boundary condition must hold.
    return jnp.where(i == 0, sigma_min, jnp.where(ramp >= 1.0, sigma_max, grid))


def intervals_at(step: Array | int, total_steps: int, initial: int, final: int) -> Array:
    """Song & Dhariwal's (2024) curriculum: ``min(s0 2^floor(k / K'), s1)`` intervals at
    step ``k`` of ``K``, ``K' = floor(K / (floor(log2(s1 / s0)) + 1))``: doubling from
    ``initial`` to ``final``. ``initial == final`` keeps the grid fixed (distillation)."""
    doublings = math.floor(math.log2(final / initial)) + 1
    stage = max(total_steps // doublings, 1)
    grown = initial * 2 ** (jnp.asarray(step) // stage)
    return jnp.minimum(grown, final).astype(jnp.int32)


def skip_out(sigma: Array, sigma_min: float, sigma_data: float) -> tuple[Array, Array]:
    """``(c_skip, c_out)`` of the consistency parametrisation (module docstring)."""
    gap = sigma - sigma_min
    c_skip = sigma_data**2 / (gap**2 + sigma_data**2)
    c_out = gap * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
    return c_skip, c_out


def consistency_fn(net_fn: NetFn, c_noise: Callable[[Array], Array], *, sigma_min: float,
                   sigma_data: float) -> SigmaFn:
    """``f(x, sigma)`` of the network ``net_fn(x, c_noise)``, conditioned on
    ``c_noise(sigma)`` (the network's own noise input for that level)."""

    def f(x: Array, sigma: Array) -> Array:
        c_skip, c_out = (batch_broadcast(c, x) for c in skip_out(sigma, sigma_min, sigma_data))
        c_in = batch_broadcast(jax.lax.rsqrt(sigma**2 + sigma_data**2), x)
        return c_skip * x + c_out * net_fn(c_in * x, c_noise(sigma))

    return f


def denoiser_consistency_fn(denoiser: SigmaFn, *, sigma_min: float) -> SigmaFn:
    """``f(x, sigma) = r x + (1 - r) D(x, sigma)`` with ``r = sigma_min / sigma``: one Euler
    step of the probability flow from ``sigma`` to ``sigma_min`` along the denoiser ``D``.

    A trained diffusion model read this way is already a crude consistency function (its
    one-step DDIM), so a distillation student can start as its teacher instead of from
    scratch (Song et al., 2023 initialise from the teacher too). At ``sigma = sigma_min``,
    ``r = 1`` exactly and ``f(x, sigma_min) = x`` bit for bit for any finite ``D``."""

    def f(x: Array, sigma: Array) -> Array:
        ratio = batch_broadcast(sigma_min / sigma, x)
        return ratio * x + (1.0 - ratio) * denoiser(x, sigma)

    return f


def _euler(denoiser: SigmaFn, x: Array, sigma: Array, sigma_next: Array) -> Array:
    d = (x - denoiser(x, sigma)) / batch_broadcast(sigma, x)
    return x + batch_broadcast(sigma_next - sigma, x) * d


def _heun(denoiser: SigmaFn, x: Array, sigma: Array, sigma_next: Array) -> Array:
    """EDM's Heun step of ``dx/dsigma = (x - D(x, sigma)) / sigma`` (``sigma_next > 0``)."""
    d = (x - denoiser(x, sigma)) / batch_broadcast(sigma, x)
    x_euler = x + batch_broadcast(sigma_next - sigma, x) * d
    d_next = (x_euler - denoiser(x_euler, sigma_next)) / batch_broadcast(sigma_next, x)
    return x + batch_broadcast(sigma_next - sigma, x) * 0.5 * (d + d_next)


# consistency.solver: the teacher's probability-flow step of distillation.
SOLVERS: dict[str, Callable[[SigmaFn, Array, Array, Array], Array]] = {
    "euler": _euler,
    "heun": _heun,
}


def _l2(diff: Array) -> Array:
    return jnp.mean(jnp.square(diff), axis=tuple(range(1, diff.ndim)))


def _pseudo_huber(diff: Array) -> Array:
    """Song & Dhariwal's ``sqrt(||d||^2 + c^2) - c`` with ``c = 0.00054 sqrt(D)``."""
    c = 0.00054 * math.sqrt(math.prod(diff.shape[1:]))
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=tuple(range(1, diff.ndim))) + c**2) - c


# consistency.loss: the distance d(f_student, f_target) per example.
DISTANCES: dict[str, Callable[[Array], Array]] = {"l2": _l2, "pseudo_huber": _pseudo_huber}

# consistency.weighting: lambda(sigma_n, sigma_{n+1}) per example.
WEIGHTINGS: dict[str, Callable[[Array, Array], Array]] = {
    "uniform": lambda lo, hi: jnp.ones_like(lo),
    "inverse_gap": lambda lo, hi: 1.0 / (hi - lo),  # Song & Dhariwal (2024)
}


def _uniform_logits(grid: Array, intervals: Array, p_mean: float, p_std: float) -> Array:
    return jnp.zeros(grid.shape[0] - 1)


def _lognormal_logits(grid: Array, intervals: Array, p_mean: float, p_std: float) -> Array:
    """Song & Dhariwal's ``p(n) ~ erf((ln s_{n+1} - P_mean) / (sqrt 2 P_std)) - erf((ln s_n
    - P_mean) / (sqrt 2 P_std))``: the mass of ``ln sigma ~ N(P_mean, P_std^2)`` in the
    interval."""
    cdf = jax.scipy.special.erf((jnp.log(grid) - p_mean) / (math.sqrt(2.0) * p_std))
    return jnp.log(jnp.maximum(cdf[1:] - cdf[:-1], 1e-30))


# consistency.noise_levels: how the interval n is drawn (logits over the padded grid).
NOISE_LEVELS: dict[str, Callable[..., Array]] = {"uniform": _uniform_logits,
                                                 "lognormal": _lognormal_logits}


def consistency_loss(
    student: SigmaFn,
    target: SigmaFn,
    key: Array,
    x0: Array,
    *,
    grid: Array,
    intervals: Array,
    partner: Callable[[Array, Array, Array, Array, Array], Array],
    distance: str = "l2",
    weighting: str = "uniform",
    noise_levels: str = "uniform",
    p_mean: float = -1.1,
    p_std: float = 2.0,
) -> Array:
    """The batch mean of ``lambda d(f(x_{n+1}, sigma_{n+1}), sg(f^-(x_n, sigma_n)))``.

    ``grid``: the ascending levels (``karras_grid``, padded), of which the first
    ``intervals + 1`` are in use; each example draws its interval ``n`` by ``noise_levels``
    and its noise from its own key (``key`` ``(2,)`` for the batch or ``(B, 2)``).
    ``partner(x0, z, x_next, sigma_next, sigma)`` gives ``x_n``: the teacher's ODE step
    (distillation) or ``x0 + sigma z`` (training).
    """
    keys = jax.vmap(jax.random.split)(example_keys(key, x0.shape[0]))
    logits = NOISE_LEVELS[noise_levels](grid, intervals, p_mean, p_std)
    logits = jnp.where(jnp.arange(logits.shape[0]) < intervals, logits, -jnp.inf)
    n = jax.vmap(lambda k: jax.random.categorical(k, logits))(keys[:, 0])
    z = jax.vmap(lambda k: jax.random.normal(k, x0.shape[1:], x0.dtype))(keys[:, 1])
    sigma, sigma_next = grid[n], grid[n + 1]
    x_next = x0 + batch_broadcast(sigma_next, x0) * z
    x_n = jax.lax.stop_gradient(partner(x0, z, x_next, sigma_next, sigma))
    ours = student(x_next, sigma_next)
    theirs = jax.lax.stop_gradient(target(x_n, sigma))
    weight = WEIGHTINGS[weighting](sigma, sigma_next)
    return jnp.mean(weight * DISTANCES[distance](ours - theirs))


def sampling_sigmas(grid: Array, steps: int, levels: tuple[int, ...] = ()) -> Array:
    """The ``steps`` descending levels multistep sampling visits: ``sigma_max`` first, then
    levels of the training grid at evenly spaced indices (never ``sigma_min``, where ``f``
    is the identity). ``levels`` (from `parse_levels`), when it names ``steps`` of them,
    gives the indices instead, counted from ``sigma_max`` (0) down."""
    intervals = grid.shape[0] - 1
    if not 1 <= steps <= intervals:
        raise ValueError(f"steps must lie in [1, {intervals}], got {steps}")
    if levels := levels_for(levels, steps):
        return grid[jnp.asarray([intervals - level for level in levels])]
    index = [round(intervals * (1 - i / steps)) for i in range(steps)]
    return grid[jnp.asarray(index)]


def levels_for(levels: tuple[int, ...], steps: int) -> tuple[int, ...]:
    """The named levels a draw of ``steps`` steps visits: ``levels`` when it names that many,
    else () (the evenly spaced ones)."""
    return levels if len(levels) == steps else ()


def parse_levels(text: str, intervals: int) -> tuple[int, ...]:
    """The grid levels of a multistep draw from their comma-separated indices, counted from
    ``sigma_max`` (0) down to ``sigma_min`` (``intervals``), as openai/consistency_models'
    ``--ts``: '0,11' draws at sigma_max and then at level 11. '' is none. ValueError
    unless they start at 0, increase, and stop short of sigma_min."""
    if not text.strip():
        return ()
    try:
        levels = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"{text!r} is not comma-separated whole numbers") from None
    if levels[0] != 0 or any(b <= a for a, b in itertools.pairwise(levels)):
        raise ValueError(f"{text!r} must start at 0 (sigma_max) and increase")
    if levels[-1] >= intervals:
        raise ValueError(f"{text!r} must stay below {intervals} (sigma_min, where the "
                         "consistency function is the identity)")
    return levels


def multistep_sample(f: SigmaFn, key: Array, shape: tuple[int, ...], sigmas: Array,
                     sigma_min: float) -> Array:
    """Song et al.'s multistep consistency sampling (Algorithm 1): ``x = f(sigma_max z,
    sigma_max)``, then for each further level ``x = f(x + sqrt(sigma^2 - sigma_min^2) z,
    sigma)``. One evaluation of ``f`` per level."""
    batch = shape[0]
    keys = jax.random.split(key, sigmas.shape[0])
    x = f(sigmas[0] * jax.random.normal(keys[0], shape), jnp.full((batch,), sigmas[0]))

    def body(i: Array, x: Array) -> Array:
        sigma = sigmas[i]
        noise = jnp.sqrt(jnp.maximum(sigma**2 - sigma_min**2, 0.0))
        x = x + noise * jax.random.normal(keys[i], shape)
        return f(x, jnp.full((batch,), sigma))

    return jax.lax.fori_loop(1, sigmas.shape[0], body, x)
