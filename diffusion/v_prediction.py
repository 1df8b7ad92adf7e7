"""The v-prediction parametrisation (Salimans & Ho, 2022, Appendix D) on any SDE with
Gaussian marginals ``x_t = alpha(t) x0 + sigma(t) z``.

The network predicts ``v = alpha z - sigma x0``. With ``x_t`` the pair ``(x_t, v)`` is a
rotation (scaled by ``alpha^2 + sigma^2``, 1 on VP) of ``(x0, z)``, so each reads off the
other exactly:

    x0    = (alpha x - sigma v) / (alpha^2 + sigma^2)
    z     = (sigma x + alpha v) / (alpha^2 + sigma^2)
    score = -z / sigma

and, from a score, ``z = -sigma score``, ``x0 = (x - sigma z) / alpha``, ``v = alpha z -
sigma x0``. On VP, ``v`` is the rate ``dx/dphi`` of ``x = cos(phi) x0 + sin(phi) z``: its
target stays of unit scale at both ends, where noise prediction (``x0`` read at low SNR)
and data prediction (``z`` read at high SNR) each amplify the network's error.

The objective ``training.objective='v_prediction'`` is ``|| v_theta - v ||^2`` at ``t ~
U(eps, T)``; through a score, ``v_theta - v = (alpha^2 + sigma^2) / alpha (z_theta - z)``
with ``z_theta = -sigma score``, so it is the noise-prediction loss weighted by
``((alpha^2 + sigma^2) / alpha)^2`` (``1 + SNR^-1`` on VP) and any score function trains
with it (``losses.get_loss_fn``).
"""

from __future__ import annotations

from collections.abc import Callable

import jax

from diffusion import sde_lib
from diffusion.sde_lib import SDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
NetFn = Callable[[Array, Array], Array]

__all__ = [
    "eps_from_v",
    "score_from_v",
    "v_from_score",
    "v_score_fn",
    "x0_from_v",
]


def _alpha_sigma(sde: SDE, x: Array, t: Array | float) -> tuple[Array, Array]:
    t = jax.numpy.broadcast_to(jax.numpy.asarray(t, x.dtype), x.shape[:1])
    return (batch_broadcast(sde.marginal_scale(t), x), batch_broadcast(sde.marginal_std(t), x))


def x0_from_v(sde: SDE, v: Array, x: Array, t: Array | float) -> Array:
    """The data ``x0`` that ``(x_t, v)`` at ``t`` stand for."""
    alpha, sigma = _alpha_sigma(sde, x, t)
    return (alpha * x - sigma * v) / (alpha**2 + sigma**2)


def eps_from_v(sde: SDE, v: Array, x: Array, t: Array | float) -> Array:
    """The noise ``z`` that ``(x_t, v)`` at ``t`` stand for."""
    alpha, sigma = _alpha_sigma(sde, x, t)
    return (sigma * x + alpha * v) / (alpha**2 + sigma**2)


def score_from_v(sde: SDE, v: Array, x: Array, t: Array | float) -> Array:
    """The score at ``(x, t)`` of a model whose v-prediction there is ``v``."""
    _, sigma = _alpha_sigma(sde, x, t)
    return -eps_from_v(sde, v, x, t) / sigma


def v_from_score(sde: SDE, score: Array, x: Array, t: Array | float) -> Array:
    """The v-prediction at ``(x, t)`` of the score ``score``."""
    alpha, sigma = _alpha_sigma(sde, x, t)
    eps = -sigma * score
    return alpha * eps - sigma * (x - sigma * eps) / alpha


def v_score_fn(sde: SDE, net_fn: NetFn, p, sigma_data: float) -> ScoreFn:
    """``model.preconditioning='v'``: the network's output is ``v = alpha z - sigma x0``,
    read as a score; ``p`` gives the noise conditioning (``p.c_noise``: ``999 t`` on VP),
    ``sigma_data`` is unused."""
    del sigma_data

    def score_fn(x: Array, t: Array) -> Array:
        t = jax.numpy.broadcast_to(jax.numpy.asarray(t, x.dtype), x.shape[:1])
        return score_from_v(sde, net_fn(x, p.c_noise(sde, t)), x, t)

    return score_fn
