"""Reverse-SDE samplers: the predictor steps (:data:`PREDICTORS`), the corrector steps
(:data:`CORRECTORS`), predictor-corrector sampling (:func:`pc_sampler`) and the registry
entries built on it: one predictor alone (:func:`predictor_sampler`, e.g. DDPM/SMLD
ancestral sampling) and SMLD's annealed Langevin dynamics (:func:`annealed_langevin_sampler`).
The pieces every sampler family shares (time grid, Tweedie denoising, the compiled loop)
are in :mod:`diffusion.sampler_common`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from diffusion.sampler_common import (
    Sampler,
    SamplerFactory,
    ScoreFn,
    batch_t,
    choose,
    default_steps,
    integrate,
    time_grid,
    tweedie_denoise,
)
from diffusion.sde_lib import SDE, VESDE, VPSDE, batch_broadcast

Array = jax.Array
# step(key, sde, score_fn, x, t, t_next) -> (x, x_mean); t, t_next are scalars, t_next < t.
PredictorStep = Callable[[Array, SDE, ScoreFn, Array, Array, Array], tuple[Array, Array]]
# step(key, sde, score_fn, x, t, snr) -> (x, x_mean): MCMC at fixed t towards p_t.
CorrectorStep = Callable[[Array, SDE, ScoreFn, Array, Array, float], tuple[Array, Array]]

__all__ = [
    "CORRECTORS",
    "PREDICTORS",
    "ancestral_step",
    "annealed_langevin_sampler",
    "annealed_langevin_step",
    "euler_maruyama_step",
    "langevin_step",
    "pc_sampler",
    "predictor_sampler",
    "reverse_diffusion_step",
]


# ---------------------------------------------------------------------------------------
# Predictors
# ---------------------------------------------------------------------------------------


def euler_maruyama_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array
) -> tuple[Array, Array]:
    """Euler–Maruyama on the reverse SDE from ``t`` to ``t_next``. One score evaluation."""
    drift, diffusion = sde.reverse(score_fn).sde(x, batch_t(t, x))
    dt = t_next - t  # negative: time runs backwards
    x_mean = x + drift * dt
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(diffusion * jnp.sqrt(-dt), x) * noise, x_mean


def reverse_diffusion_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array
) -> tuple[Array, Array]:
    """Reverse of the SDE's own discretisation over ``[t_next, t]`` (DDPM/SMLD ancestral-style
    for VP/VE, Euler otherwise). One score evaluation.
    """
    f, g = sde.reverse(score_fn).discretize(x, batch_t(t, x), t - t_next)
    x_mean = x - f
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(g, x) * noise, x_mean


def check_ancestral(sde: SDE) -> None:
    """ValueError unless ``sde`` is VP (DDPM) or VE (SMLD)."""
    if not isinstance(sde, VPSDE | VESDE):
        raise ValueError(
            "ancestral sampling is defined for VP (DDPM) and VE (SMLD) SDEs, "
            f"not {type(sde).__name__}"
        )


def _transition(sde: SDE, t: Array, s: Array) -> tuple[Array, Array]:
    """``(a, v)`` of the forward transition ``x_t = a x_s + sqrt(v) z`` (``s < t``), in forms
    free of cancellation: VP ``a^2 = exp(-(B(t) - B(s)))``, ``v = 1 - a^2``; VE ``a = 1``,
    ``v = sigma(t)^2 - sigma(s)^2``."""
    check_ancestral(sde)
    if isinstance(sde, VPSDE):
        log_a2 = -(sde.beta_integral(t) - sde.beta_integral(s))
        return jnp.exp(0.5 * log_a2), -jnp.expm1(log_a2)
    log_ratio = math.log(sde.sigma_max / sde.sigma_min)
    return jnp.ones_like(t), sde.sigma(t) ** 2 * -jnp.expm1(-2.0 * (t - s) * log_ratio)


def ancestral_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array
) -> tuple[Array, Array]:
    """Ancestral step from ``t`` to ``s = t_next``: a draw of the forward process's posterior
    ``q(x_s | x_t, x0_hat)`` with ``x0_hat`` from Tweedie's formula, for any grid.

    With the transition ``x_t = a x_s + sqrt(v) z`` the mean is ``(x + v score) / a`` and the
    variance ``v std(s)^2 / std(t)^2``: DDPM's posterior on VP, SMLD's
    ``x + (sigma_t^2 - sigma_s^2) score`` with variance
    ``sigma_s^2 (sigma_t^2 - sigma_s^2) / sigma_t^2`` on VE. VP and VE only (ValueError
    otherwise). One score evaluation.
    """
    a, v = _transition(sde, t, t_next)
    score = score_fn(x, batch_t(t, x))
    x_mean = (x + v * score) / a
    variance = v * (sde.marginal_std(t_next) / sde.marginal_std(t)) ** 2
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + jnp.sqrt(variance) * noise, x_mean


# 'none': no predictor (corrector-only sampling; see pc_sampler).
PREDICTORS: dict[str, PredictorStep | None] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
    "ancestral": ancestral_step,
    "none": None,
}
# Checks run when a sampler is built with the predictor, so that refusals come early.
_PREDICTOR_CHECKS: dict[str, Callable[[SDE], None]] = {"ancestral": check_ancestral}


def check_corrector_options(snr: float, n_corrector_steps: int) -> None:
    """Raises ValueError unless ``snr > 0`` and ``n_corrector_steps`` is an int >= 1."""
    if isinstance(n_corrector_steps, bool) or not (
        isinstance(n_corrector_steps, int) and n_corrector_steps >= 1
    ):
        raise ValueError(f"n_corrector_steps must be an int >= 1, got {n_corrector_steps!r}")
    if not snr > 0:
        raise ValueError(f"snr must be positive, got {snr}")


def check_predictor(name: str, sde: SDE) -> None:
    """Raises ValueError if predictor ``name`` cannot serve ``sde`` (checked at build time)."""
    if name in _PREDICTOR_CHECKS:
        _PREDICTOR_CHECKS[name](sde)


# ---------------------------------------------------------------------------------------
# Correctors
# ---------------------------------------------------------------------------------------


def _per_example_norm(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def _ddpm_alpha(sde: SDE, t_b: Array, dtype: Any) -> Array | float:
    """DDPM ``alpha`` of the level at ``t`` on the VP family (whose tables exist), else 1."""
    alphas = getattr(sde, "alphas", None)
    return 1.0 if alphas is None else jnp.asarray(alphas, dtype)[sde.discrete_index(t_b)]


def langevin_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, snr: float
) -> tuple[Array, Array]:
    """One Langevin MCMC step towards ``p_t`` with the step size set by a signal-to-noise
    ratio (Song et al., 2021, Alg. 4). One score evaluation.

    The norms are batch means, as in score_sde: a per-example ratio is unstable in low
    dimension, where a single near-zero score norm gives an enormous step.
    """
    t_b = batch_t(t, x)
    grad = score_fn(x, t_b)
    noise = jax.random.normal(key, x.shape, x.dtype)
    grad_norm = jnp.mean(_per_example_norm(grad))
    noise_norm = jnp.mean(_per_example_norm(noise))
    # VP-type models shrink the step by the DDPM alpha of the current level.
    alpha = _ddpm_alpha(sde, t_b, x.dtype)
    step_size = batch_broadcast(2.0 * alpha * (snr * noise_norm / grad_norm) ** 2, x)
    x_mean = x + step_size * grad
    return x_mean + jnp.sqrt(2.0 * step_size) * noise, x_mean


def annealed_langevin_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, snr: float
) -> tuple[Array, Array]:
    """One step of annealed Langevin dynamics at level ``t`` (SMLD; score_sde's
    AnnealedLangevinDynamics): step size ``2 alpha (snr std(t))^2`` with ``alpha`` the DDPM
    alpha of the level on the VP family and 1 on VE. One score evaluation.
    """
    t_b = batch_t(t, x)
    grad = score_fn(x, t_b)
    noise = jax.random.normal(key, x.shape, x.dtype)
    alpha = _ddpm_alpha(sde, t_b, x.dtype)
    step_size = batch_broadcast(2.0 * alpha * (snr * sde.marginal_std(t_b)) ** 2, x)
    x_mean = x + step_size * grad
    return x_mean + jnp.sqrt(2.0 * step_size) * noise, x_mean


CORRECTORS: dict[str, CorrectorStep | None] = {
    "langevin": langevin_step,
    "annealed_langevin": annealed_langevin_step,
    "none": None,
}


# ---------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------


def resolve_pc(
    sde: SDE, predictor: str, corrector: str, snr: float, n_corrector_steps: int
) -> tuple[PredictorStep | None, CorrectorStep | None]:
    """The predictor and corrector steps named (None for 'none'), checked against ``sde``
    and the corrector's options; 'none' for both is a ValueError."""
    predict = choose("predictor", predictor, PREDICTORS)
    correct = choose("corrector", corrector, CORRECTORS)
    if predict is None and correct is None:
        raise ValueError("pc sampling needs a predictor or a corrector, got 'none' for both")
    check_predictor(predictor, sde)
    if correct is not None:
        check_corrector_options(snr, n_corrector_steps)
    return predict, correct


def pc_step(
    sde: SDE,
    score_fn: ScoreFn,
    predict: PredictorStep | None,
    correct: CorrectorStep | None,
    snr: float,
    n_corrector_steps: int,
    impose: Callable[[Array, Array, Array], Array] | None = None,
) -> Callable[[Array, Array, Array, Array], Array]:
    """One predictor-corrector time step for :func:`integrate`: ``n_corrector_steps``
    corrector steps at ``t``, then the predictor from ``t`` to ``t_next``. ``impose(key, x,
    t)``, if given, runs after every corrector step and after the predictor (the
    replacement of known data in the conditional samplers of ``controllable``)."""

    def then_impose(key: Array, x: Array, t: Array, update) -> Array:
        if impose is None:
            return update(key, x)
        key_update, key_impose = jax.random.split(key)
        return impose(key_impose, update(key_update, x), t)

    def step(key: Array, x: Array, t: Array, t_next: Array) -> Array:
        key_corrector, key_predictor = jax.random.split(key)
        if correct is not None:
            x = jax.lax.fori_loop(
                0,
                n_corrector_steps,
                lambda j, x: then_impose(
                    jax.random.fold_in(key_corrector, j), x, t,
                    lambda k, x: correct(k, sde, score_fn, x, t, snr)[0],
                ),
                x,
            )
        if predict is None:
            return x
        return then_impose(
            key_predictor, x, t_next, lambda k, x: predict(k, sde, score_fn, x, t, t_next)[0]
        )

    return step


def pc_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    predictor: str = "euler_maruyama",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Sampler:
    """Predictor-corrector sampling (Song et al., 2021): at each of ``steps`` (default
    ``sde.N``) grid times, ``n_corrector_steps`` corrector steps then one predictor step.

    Options: ``predictor`` in :data:`PREDICTORS`, ``corrector`` in :data:`CORRECTORS`,
    ``snr`` of the corrector, ``n_corrector_steps``. With predictor 'none' the corrector
    alone runs at ``steps`` levels from ``T`` to ``eps`` inclusive (annealed MCMC, as in
    score_sde); 'none' for both is a ValueError.
    nfe = ``steps * (predictor != 'none' + n_corrector_steps) + denoise`` (no corrector term
    for corrector 'none').
    """
    predict, correct = resolve_pc(sde, predictor, corrector, snr, n_corrector_steps)
    steps = default_steps(steps, sde.N)
    per_step = int(predict is not None) + (n_corrector_steps if correct is not None else 0)
    nfe = steps * per_step + int(denoise)

    def grid() -> Array:
        if predict is None:  # levels T .. eps inclusive; no interval is predicted over
            levels = jnp.linspace(sde.T, eps, steps)
            return jnp.append(levels, levels[-1])
        return time_grid(sde, steps, eps)

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int]:
        key_prior, key_loop = jax.random.split(key)
        x = sde.prior_sampling(key_prior, shape)
        step = pc_step(sde, score_fn, predict, correct, snr, n_corrector_steps)
        x = integrate(key_loop, x, grid(), step)
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
        return x, nfe

    return sampler


def predictor_sampler(predictor: str) -> SamplerFactory:
    """A registry entry running one predictor alone (PC with no corrector)."""

    def factory(
        sde: SDE, shape: tuple[int, ...], *, steps: int | None, eps: float, denoise: bool
    ) -> Sampler:
        return pc_sampler(
            sde,
            shape,
            steps=steps,
            eps=eps,
            denoise=denoise,
            predictor=predictor,
            corrector="none",
        )

    factory.__name__ = f"{predictor}_sampler"
    factory.__doc__ = (
        f"The {predictor!r} predictor alone over ``steps`` (default ``sde.N``) uniform steps "
        "from T to eps. No options. nfe = ``steps + denoise``."
    )
    return factory


def annealed_langevin_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    snr: float = 0.316,
    n_corrector_steps: int = 1,
) -> Sampler:
    """SMLD's annealed Langevin dynamics alone (score_sde's predictor 'none' with corrector
    'ald'): ``n_corrector_steps`` steps of :func:`annealed_langevin_step` at each of
    ``steps`` (default ``sde.N``) levels uniform in ``t`` from ``T`` to ``eps`` inclusive
    (log-uniform noise levels), step size ``2 (snr sigma(t))^2``. Options: ``snr`` (default
    0.316, score_sde's NCSN setting, there with 100 steps at each of 10 levels; larger
    mixes faster, at the price of the Langevin bias), ``n_corrector_steps``.
    nfe = ``steps * n_corrector_steps + denoise``.

    VE only. On VP and sub-VP the step shrinks with ``std(t)^2`` while the target's variance
    stays ``~ data variance``, so the chain stops mixing well above ``eps`` and the samples
    keep the shrunken mean ``scale(t) x0`` of that level (measured on a Gaussian: means
    2-10% short with 300-1000 levels): there the corrector belongs in 'pc' behind a
    predictor.
    """
    if not isinstance(sde, VESDE):
        raise ValueError(
            "annealed_langevin sampling (the corrector alone) is SMLD's sampler for VE SDEs, "
            f"not {type(sde).__name__}; use 'pc' with corrector='annealed_langevin'"
        )
    return pc_sampler(
        sde,
        shape,
        steps=steps,
        eps=eps,
        denoise=denoise,
        predictor="none",
        corrector="annealed_langevin",
        snr=snr,
        n_corrector_steps=n_corrector_steps,
    )
