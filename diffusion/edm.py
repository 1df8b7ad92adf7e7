"""EDM (Karras et al., 2022) on the score SDEs: the noise level ``sigma(t)`` and scaling
``s(t)`` of VP, sub-VP and VE, the inverse ``t(sigma)``, rho-spaced noise levels and the
2nd-order Heun sampler of the paper's Algorithm 2.

An SDE with marginals ``x_t = s(t) (x0 + sigma(t) z)`` is EDM's process in
``x_hat = x / s``: ``s(t) = marginal_scale``, ``sigma(t) = marginal_std / marginal_scale``.

=======  ==============================  ==============================================
SDE      ``sigma(t)``                    ``t(sigma)``
=======  ==============================  ==============================================
VP       ``sqrt(exp(B(t)) - 1)``          ``B^-1(log(1 + sigma^2))``
sub-VP   ``2 sinh(B(t) / 2)``             ``B^-1(2 asinh(sigma / 2))``
VE       ``sigma_min (max/min)^t``        ``log(sigma / sigma_min) / log(max / min)``
=======  ==============================  ==============================================

``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2`` inverts by the quadratic formula. The
sub-VP form is the brief's ``r^2 + sigma r - 1 = 0`` for ``r = sqrt(a) = exp(-B/2)``
solved in closed form: ``sigma = (1 - a) / sqrt(a) = 2 sinh(B/2)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion.sampler_common import Sampler, ScoreFn, batch_t, default_steps
from diffusion.sde_lib import (
    SDE,
    VESDE,
    VPSDE,
    CosinePath,
    LinearPath,
    batch_broadcast,
    subVPSDE,
)

Array = jax.Array

__all__ = [
    "DEFAULT_STEPS",
    "denoiser",
    "edm_heun_sampler",
    "edm_sigma",
    "edm_time_grid",
    "karras_sigmas",
    "sigma_to_t",
]

DEFAULT_STEPS = 18  # EDM's CIFAR-10 setting: 2 * 18 + 1 = 37 evaluations with denoising


def edm_sigma(sde: SDE, t: Array) -> Array:
    """EDM noise level ``sigma(t) = marginal_std(t) / marginal_scale(t)``."""
    t = jnp.asarray(t)
    return sde.marginal_std(t) / sde.marginal_scale(t)


def _inverse_beta_integral(sde: VPSDE | subVPSDE, b: Array) -> Array:
    """``t`` with ``B(t) = b``: the positive root of ``d t^2 / 2 + beta_min t - b = 0`` in its
    cancellation-free form ``2 b / (beta_min + sqrt(beta_min^2 + 2 d b))``."""
    d = sde.beta_max - sde.beta_min
    root = jnp.sqrt(sde.beta_min**2 + 2.0 * d * b)
    return 2.0 * b / jnp.maximum(sde.beta_min + root, jnp.finfo(root.dtype).tiny)


def _vp_t(sde: VPSDE, sigma: Array) -> Array:
    return _inverse_beta_integral(sde, jnp.log1p(sigma**2))


def _subvp_t(sde: subVPSDE, sigma: Array) -> Array:
    return _inverse_beta_integral(sde, 2.0 * jnp.arcsinh(0.5 * sigma))


def _ve_t(sde: VESDE, sigma: Array) -> Array:
    return jnp.log(sigma / sde.sigma_min) / math.log(sde.sigma_max / sde.sigma_min)


def _linear_path_t(sde: LinearPath, sigma: Array) -> Array:
    return sigma / (1.0 + sigma)  # sigma = t / (1 - t)


def _cosine_path_t(sde: CosinePath, sigma: Array) -> Array:
    return jnp.arctan(sigma) * (2.0 / math.pi)  # sigma = tan(pi t / 2)


# SDE class -> t(sigma). Looked up along the MRO, so subclasses inherit their parent's.
SIGMA_TO_T: dict[type[SDE], Callable[..., Array]] = {
    VPSDE: _vp_t,
    subVPSDE: _subvp_t,
    VESDE: _ve_t,
    LinearPath: _linear_path_t,
    CosinePath: _cosine_path_t,
}


def _inverse(sde: SDE, who: str) -> Callable[..., Array]:
    for cls in type(sde).__mro__:
        if cls in SIGMA_TO_T:
            return SIGMA_TO_T[cls]
    raise ValueError(
        f"{who} needs t(sigma), known for {sorted(c.__name__ for c in SIGMA_TO_T)}, "
        f"not {type(sde).__name__}"
    )


def check_sigma_to_t(sde: SDE, who: str) -> None:
    """ValueError naming ``who`` unless ``sde`` has a known ``t(sigma)``."""
    _inverse(sde, who)


def sigma_to_t(sde: SDE, sigma: Array) -> Array:
    """The time ``t`` at which :func:`edm_sigma` is ``sigma`` (inverse of ``edm_sigma``)."""
    return _inverse(sde, "sigma_to_t")(sde, jnp.asarray(sigma))


def karras_sigmas(sde: SDE, steps: int, eps: float, rho: float = 7.0) -> Array:
    """``steps + 1`` noise levels from ``sigma(T)`` down to ``sigma(eps)``, evenly spaced in
    ``sigma^(1/rho)`` (EDM eq. 5 without the final 0)."""
    ends = edm_sigma(sde, jnp.asarray([sde.T, eps]))
    ramp = jnp.linspace(0.0, 1.0, steps + 1)
    hi, lo = ends[0] ** (1.0 / rho), ends[1] ** (1.0 / rho)
    return (hi + ramp * (lo - hi)) ** rho


def edm_time_grid(sde: SDE, steps: int, eps: float, rho: float = 7.0) -> Array:
    """The times of :func:`karras_sigmas`: ``steps + 1`` times from ``T`` down to ``eps``
    (ends set exactly), dense where the noise level is low."""
    grid = sigma_to_t(sde, karras_sigmas(sde, steps, eps, rho))
    return grid.at[0].set(sde.T).at[-1].set(eps)


def denoiser(sde: SDE, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
    """EDM's ``D(x_hat; sigma) = x_hat + sigma^2 s score(s x_hat, t(sigma))`` of a score on
    ``sde``, with ``s = s(t(sigma))``; ``sigma`` a scalar or ``(B,)``."""

    def denoise(x: Array, sigma: Array) -> Array:
        t = jnp.broadcast_to(sigma_to_t(sde, sigma), x.shape[:1])
        s = batch_broadcast(sde.marginal_scale(t), x)
        return x + batch_broadcast(jnp.broadcast_to(sigma, x.shape[:1]), x) ** 2 * s * \
            score_fn(s * x, t)

    return denoise


def check_rho(rho: float) -> None:
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho}")


def edm_heun_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = math.inf,
    S_noise: float = 1.0,
    rho: float = 7.0,
) -> Sampler:
    """EDM's 2nd-order Heun sampler (Karras et al., 2022, Alg. 2) in ``x_hat = x / s(t)``,
    with the denoiser ``D(x_hat; sigma) = x_hat + sigma^2 s score(s x_hat, t(sigma))``.

    ``steps`` (default 18) Heun steps over :func:`karras_sigmas` from ``sigma(T)`` to
    ``sigma(eps)``, starting from the SDE's prior ``sde.prior_sampling(key, shape) / s(T)``.
    ``denoise=True`` adds EDM's last step, the Euler step from ``sigma(eps)`` to 0, which is
    ``D`` itself (the Tweedie posterior mean: one evaluation, no churn); ``denoise=False``
    returns ``s(eps) x_hat`` at ``eps``. Either way the result is in the SDE's data space.

    Deterministic by default. Options (EDM's names and defaults): ``S_churn`` (total churn;
    per step ``gamma = min(S_churn / steps, sqrt(2) - 1)`` on levels in ``[S_min, S_max]``),
    ``S_min``, ``S_max``, ``S_noise``, ``rho``. As in EDM a churned first level lies above
    ``sigma(T)``, i.e. the score is then evaluated slightly beyond ``T``.
    nfe = ``2 * steps + denoise``. VP, sub-VP and VE (another SDE needs a ``t(sigma)``).
    """
    check_sigma_to_t(sde, "edm_heun")
    check_rho(rho)
    if not (S_churn >= 0 and S_noise >= 0 and S_min <= S_max):
        raise ValueError(
            f"edm_heun needs S_churn >= 0, S_noise >= 0 and S_min <= S_max, got "
            f"S_churn={S_churn}, S_noise={S_noise}, S_min={S_min}, S_max={S_max}"
        )
    steps = default_steps(steps, DEFAULT_STEPS)
    nfe = 2 * steps + int(denoise)
    stochastic = S_churn > 0 and S_noise > 0
    gamma_max = min(S_churn / steps, math.sqrt(2.0) - 1.0)

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int]:
        sigmas = karras_sigmas(sde, steps, eps, rho)
        denoised = denoiser(sde, score_fn)

        def body(i: Array, x: Array) -> Array:
            sigma, sigma_next = sigmas[i], sigmas[i + 1]
            if stochastic:
                churn = (sigma >= S_min) & (sigma <= S_max)
                sigma_hat = sigma * (1.0 + jnp.where(churn, gamma_max, 0.0))
                z = jax.random.normal(jax.random.fold_in(key, i), x.shape, x.dtype)
                # Clamped: compiled, sigma_hat^2 - sigma^2 of an unchurned level can round
                # to a tiny negative number, whose square root is NaN.
                extra = jnp.sqrt(jnp.maximum(sigma_hat**2 - sigma**2, 0.0))
                x = x + extra * S_noise * z
                sigma = sigma_hat
            d = (x - denoised(x, sigma)) / sigma
            x_euler = x + (sigma_next - sigma) * d
            d_next = (x_euler - denoised(x_euler, sigma_next)) / sigma_next
            return x + (sigma_next - sigma) * 0.5 * (d + d_next)

        x = sde.prior_sampling(key, shape)
        x = x / batch_broadcast(sde.marginal_scale(batch_t(sde.T, x)), x)
        x = jax.lax.fori_loop(0, steps, body, x)
        if denoise:
            return denoised(x, sigmas[-1]), nfe
        return x * batch_broadcast(sde.marginal_scale(batch_t(eps, x)), x), nfe

    return sampler
