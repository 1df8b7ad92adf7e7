"""Flow matching on Gaussian paths: velocity <-> score, the velocity parametrisation of a
network, the flow-matching loss, and the closed-form velocity of Gaussian data.

A Gaussian path (``sde_lib.GaussianPath``, or any SDE: VP and VE are Gaussian paths too)
has ``x_t = alpha x0 + sigma z``, hence ``v = dx_t/dt = alpha' x0 + sigma' z``. Solving the
two for ``z`` and using ``E[z | x_t] = -sigma score`` (Tweedie):

    score = (alpha v - alpha' x) / (sigma (alpha' sigma - alpha sigma'))
    v     = (alpha'/alpha) (x + sigma^2 score) - sigma sigma' score

The second is the probability-flow drift ``f - g^2 score / 2`` of the path's SDE, so the
optimal velocity ``E[v | x_t]`` is exactly what the ODE samplers and the likelihood
integrate: a velocity network enters them as the score above, and leaves as the velocity.

The loss ``|| v_theta(x_t, t) - (alpha' x0 + sigma' z) ||^2`` at ``t ~ U(eps, T)`` is, by
the same identities, denoising score matching with the weight ``lambda(t) = (sigma
(alpha' sigma - alpha sigma') / alpha)^2``: it is written through any score function, as
``losses`` does for the other objectives (``objective='flow_matching'``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from diffusion import sde_lib
from diffusion.sde_lib import SDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
NetFn = Callable[[Array, Array], Array]

__all__ = [
    "coefficients",
    "gaussian_velocity_fn",
    "marginal_derivatives",
    "score_from_velocity",
    "velocity_from_score",
    "velocity_score_fn",
]


def _as_batch_t(t: Array | float, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def marginal_derivatives(sde: SDE, t: Array) -> tuple[Array, Array]:
    """``(alpha'(t), sigma'(t))`` of any SDE's marginal coefficients, shaped like ``t``.

    Paths declare theirs in closed form; for the other SDEs forward-mode autodiff of
    ``marginal_scale``/``marginal_std`` is exact to rounding, so one rule serves all.
    """
    if isinstance(sde, sde_lib.GaussianPath):
        return sde.marginal_derivatives(t)
    ones = jnp.ones_like(t)
    return (jax.jvp(sde.marginal_scale, (t,), (ones,))[1],
            jax.jvp(sde.marginal_std, (t,), (ones,))[1])


def coefficients(sde: SDE, t: Array, x: Array) -> tuple[Array, ...]:
    """alpha, sigma, alpha', sigma' at ``t`` ``(B,)``, broadcast against ``x``."""
    d_alpha, d_sigma = marginal_derivatives(sde, t)
    return tuple(batch_broadcast(c, x) for c in
                 (sde.marginal_scale(t), sde.marginal_std(t), d_alpha, d_sigma))


def score_from_velocity(sde: SDE, v: Array, x: Array, t: Array | float) -> Array:
    """The score at ``(x, t)`` of a model whose velocity there is ``v`` (module docstring)."""
    t = _as_batch_t(t, x)
    alpha, sigma, d_alpha, d_sigma = coefficients(sde, t, x)
    return (alpha * v - d_alpha * x) / (sigma * (d_alpha * sigma - alpha * d_sigma))


def velocity_from_score(sde: SDE, score: Array, x: Array, t: Array | float) -> Array:
    """The velocity (probability-flow drift) at ``(x, t)`` of the score ``score``."""
    t = _as_batch_t(t, x)
    alpha, sigma, d_alpha, d_sigma = coefficients(sde, t, x)
    return d_alpha / alpha * (x + sigma**2 * score) - sigma * d_sigma * score


def velocity_score_fn(sde: SDE, net_fn: NetFn, p, sigma_data: float) -> ScoreFn:
    """``model.preconditioning='velocity'``: the network's output is the velocity
    ``v(x, t)`` of ``sde``'s path, read as a score. ``p`` gives the noise conditioning
    (``p.c_noise``; ``999 t`` for the paths); ``sigma_data`` is unused."""
    del sigma_data

    def score_fn(x: Array, t: Array) -> Array:
        t = _as_batch_t(t, x)
        return score_from_velocity(sde, net_fn(x, p.c_noise(sde, t)), x, t)

    return score_fn


def gaussian_velocity_fn(sde: SDE, mean: Array | Sequence[float], std: float
                         ) -> Callable[[Array, Array], Array]:
    """The optimal velocity ``E[alpha' x0 + sigma' z | x_t]`` when the data are
    ``N(mean, std^2 I)`` (``mean`` the flattened example, ``(D,)``), in closed form:

        v*(x, t) = alpha' mean + (alpha' alpha std^2 + sigma' sigma)
                   / (alpha^2 std^2 + sigma^2) (x - alpha mean)

    (the regression of ``v`` on ``x_t``, both Gaussian). An exact reference for the
    samplers, the loss and the likelihood.
    """
    mean = jnp.asarray(mean, jnp.float32)
    var0 = float(std) ** 2

    def velocity_fn(x: Array, t: Array) -> Array:
        t = _as_batch_t(t, x)
        flat = x.reshape(x.shape[0], -1)
        alpha, sigma, d_alpha, d_sigma = coefficients(sde, t, flat)
        gain = (d_alpha * alpha * var0 + d_sigma * sigma) / (alpha**2 * var0 + sigma**2)
        v = d_alpha * mean + gain * (flat - alpha * mean)
        return v.reshape(x.shape).astype(x.dtype)

    return velocity_fn
