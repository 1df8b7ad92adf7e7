"""Training objectives of score-based diffusion, written against any ``score_fn(x, t)``.

Every loss draws each example's time and noise from its own key, split from one key for
the whole (global) batch: the same key gives the same loss however the batch is sharded over
devices, and a batch cut into micro-batches (gradient accumulation) sees the same draws when
each micro-batch is given its examples' keys (``key`` of shape (B, 2) instead of (2,)).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import edm, flows, sde_lib, v_prediction
from diffusion.sde_lib import SDE, VESDE, VPSDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
LossFn = Callable[[ScoreFn, Array, Array], Array]

__all__ = ["DISCRETE_LOSSES", "OBJECTIVES", "get_loss_fn"]


def example_keys(key: Array, batch_size: int) -> Array:
    """One raw key per example, (B, 2); keys that already are per example pass through."""
    return key if key.ndim == 2 else jax.random.split(key, batch_size)


def _draws(key: Array, x: Array, first: Callable[[Array], Array]) -> tuple[Array, Array]:
    """Per example: ``first(key)`` (its noise level) and standard normal noise of its shape."""
    keys = jax.vmap(jax.random.split)(example_keys(key, x.shape[0]))
    level = jax.vmap(first)(keys[:, 0])
    z = jax.vmap(lambda k: jax.random.normal(k, x.shape[1:], x.dtype))(keys[:, 1])
    return level, z


def reducer(reduce_mean: bool) -> Callable[[Array], Array]:
    """Per-example reduction over every non-batch axis."""
    op = jnp.mean if reduce_mean else jnp.sum
    return lambda v: op(v, axis=tuple(range(1, v.ndim)))


def _continuous_loss(
    sde: SDE, *, likelihood_weighting: bool, reduce_mean: bool, eps: float
) -> LossFn:
    reduce = reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        t, z = _draws(key, x, lambda k: jax.random.uniform(k, (), x.dtype, eps, sde.T))
        mean, std = sde.marginal_prob(x, t)
        std_b = batch_broadcast(std, x)
        score = score_fn(mean + std_b * z, t)
        if likelihood_weighting:
            # g^2 || s - grad log p(x_t | x) ||^2: the weighting that makes the objective a
            # bound on the negative log-likelihood (Song et al., 2021, Thm. 1).
            g2 = sde.sde(jnp.zeros_like(x), t)[1] ** 2
            per_example = reduce(jnp.square(score + z / std_b)) * g2
        else:
            # lambda(t) = std^2: || std s + z ||^2, i.e. noise prediction.
            per_example = reduce(jnp.square(score * std_b + z))
        return jnp.mean(per_example)

    return loss_fn


def _edm_loss(
    sde: SDE, *, reduce_mean: bool, eps: float, p_mean: float, p_std: float, sigma_data: float
) -> LossFn:
    """EDM's objective (Karras et al., 2022, eq. 8 with Table 1's training column):
    ``ln sigma ~ N(p_mean, p_std^2)``, clipped to the SDE's ``[sigma(eps), sigma(T)]``, and
    ``lambda(sigma) || D(x_hat; sigma) - x ||^2`` with ``lambda = (sigma^2 + sigma_data^2) /
    (sigma sigma_data)^2``.

    Through a score ``D - x = sigma (z + std s)``, so the loss is the noise-prediction residual
    of the uniform-time loss weighted by ``(sigma^2 + sigma_data^2) / sigma_data^2`` at
    lognormal noise levels: any score function trains with it. With EDM's preconditioning
    (score.py) it is EDM's unit-variance regression of the network's output.
    """
    reduce = reducer(reduce_mean)
    sigma_lo, sigma_hi = (float(v) for v in edm.edm_sigma(sde, jnp.asarray([eps, sde.T])))

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        normal, z = _draws(key, x, lambda k: jax.random.normal(k, (), x.dtype))
        log_sigma = p_mean + p_std * normal
        t = edm.sigma_to_t(sde, jnp.clip(jnp.exp(log_sigma), sigma_lo, sigma_hi))
        mean, std = sde.marginal_prob(x, t)
        std_b = batch_broadcast(std, x)
        score = score_fn(mean + std_b * z, t)
        sigma = edm.edm_sigma(sde, t)  # the level t stands for, after the round trip
        weight = (sigma**2 + sigma_data**2) / sigma_data**2
        return jnp.mean(reduce(jnp.square(score * std_b + z)) * weight)

    return loss_fn


def flow_matching_error(sde: SDE, score_fn: ScoreFn, x0: Array, z: Array, t: Array) -> Array:
    """``v_theta(x_t, t) - (alpha' x0 + sigma' z)`` at ``x_t = alpha x0 + sigma z``, ``t``
    ``(B,)``, read through the score: ``c (s + z / sigma)``, ``c = sigma (alpha' sigma - alpha
    sigma') / alpha`` (diffusion/flows.py)."""
    alpha, std, d_alpha, d_std = flows.coefficients(sde, t, x0)
    score = score_fn(alpha * x0 + std * z, t)
    return std * (d_alpha * std - alpha * d_std) / alpha * (score + z / std)


def _flow_matching_loss(sde: SDE, *, reduce_mean: bool, eps: float) -> LossFn:
    """Conditional flow matching (Lipman et al., 2023; Liu et al., 2023): ``|| v_theta(x_t,
    t) - (alpha' x0 + sigma' z) ||^2`` at ``t ~ U(eps, T)`` on the SDE's (path's) marginals.

    Through a score, ``v_theta - v = c (s + z / std)`` with ``c = std (alpha' std - alpha
    std') / alpha``, the velocity's coefficient in the score (diffusion/flows.py): any score
    function trains with it, and a velocity network (``model.preconditioning='velocity'``)
    regresses its output on ``v``.
    """
    reduce = reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        t, z = _draws(key, x, lambda k: jax.random.uniform(k, (), x.dtype, eps, sde.T))
        return jnp.mean(reduce(jnp.square(flow_matching_error(sde, score_fn, x, z, t))))

    return loss_fn


def _v_prediction_loss(sde: SDE, *, reduce_mean: bool, eps: float) -> LossFn:
    """Salimans & Ho's ``|| v_theta(x_t, t) - (alpha z - sigma x0) ||^2`` at ``t ~ U(eps,
    T)``: the noise-prediction residual ``sigma s + z`` weighted by ``((alpha^2 + sigma^2) /
    alpha)^2`` (diffusion/v_prediction.py), so any score function trains with it and a v
    network (``model.preconditioning='v'``) regresses its output on ``v``.
    """
    reduce = reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        t, z = _draws(key, x, lambda k: jax.random.uniform(k, (), x.dtype, eps, sde.T))
        alpha, std = (batch_broadcast(c, x) for c in (sde.marginal_scale(t),
                                                      sde.marginal_std(t)))
        score = score_fn(alpha * x + std * z, t)
        v_hat = v_prediction.v_from_score(sde, score, alpha * x + std * z, t)
        return jnp.mean(reduce(jnp.square(v_hat - (alpha * z - std * x))))

    return loss_fn


def _ddpm_loss(sde: VPSDE, *, reduce_mean: bool) -> LossFn:
    """DDPM's simple loss: ``|| eps_hat - z ||^2`` at a uniform integer timestep, with
    ``eps_hat = -std_i * score`` so that any score function can be trained or evaluated.
    """
    reduce = reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        i, z = _draws(key, x, lambda k: jax.random.randint(k, (), 0, sde.N))
        t = i.astype(x.dtype) / (sde.N - 1)
        scale = jnp.asarray(sde.sqrt_alphas_cumprod, x.dtype)[i]
        std = jnp.asarray(sde.sqrt_1m_alphas_cumprod, x.dtype)[i]
        x_t = batch_broadcast(scale, x) * x + batch_broadcast(std, x) * z
        eps_hat = -batch_broadcast(std, x) * score_fn(x_t, t)
        return jnp.mean(reduce(jnp.square(eps_hat - z)))

    return loss_fn


def _smld_loss(sde: VESDE, *, reduce_mean: bool) -> LossFn:
    """NCSN's loss ``1/2 || sigma_i s + z ||^2`` (weighting ``lambda = sigma^2``) at a
    uniform noise level ``sigma_i = discrete_sigmas[i]``, queried at ``t = i / (N - 1)``
    where the VE marginal std equals ``sigma_i``.
    """
    reduce = reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x: Array) -> Array:
        i, z = _draws(key, x, lambda k: jax.random.randint(k, (), 0, sde.N))
        t = i.astype(x.dtype) / (sde.N - 1)
        sigma = batch_broadcast(jnp.asarray(sde.discrete_sigmas, x.dtype)[i], x)
        score = score_fn(x + sigma * z, t)
        return jnp.mean(0.5 * reduce(jnp.square(score * sigma + z)))

    return loss_fn


# Discrete-time objective per SDE class (looked up along the MRO).
DISCRETE_LOSSES: dict[type[SDE], Callable[..., LossFn]] = {VPSDE: _ddpm_loss, VESDE: _smld_loss}


# Continuous-time objectives with their own weighting and t ~ U(eps, T).
_WEIGHTED_CONTINUOUS: dict[str, Callable[..., LossFn]] = {
    "flow_matching": _flow_matching_loss,
    "v_prediction": _v_prediction_loss,
}

# training.objective names.
OBJECTIVES = ("dsm", "edm", "flow_matching", "v_prediction")


def get_loss_fn(
    sde: SDE,
    *,
    objective: str = "dsm",
    continuous: bool = True,
    likelihood_weighting: bool = False,
    reduce_mean: bool = True,
    eps: float = 1e-5,
    p_mean: float = -1.2,
    p_std: float = 1.2,
    sigma_data: float = 0.5,
) -> LossFn:
    """Build ``loss_fn(score_fn, key, x) -> scalar``, the batch mean of per-example losses.

    Args:
      sde: the forward SDE.
      objective: ``'dsm'``, score_sde's denoising score matching (the next two arguments
        choose its form), or ``'edm'``, EDM's lognormal noise levels and weighting
        (``p_mean``, ``p_std``, ``sigma_data``; continuous time, any SDE with a
        ``t(sigma)``), or ``'flow_matching'``, the velocity regression of flow matching
        at ``t ~ U(eps, T)`` (continuous time, any SDE or ``sde_lib.GaussianPath``), or
        ``'v_prediction'``, Salimans & Ho's ``|| v_theta - v ||^2`` at ``t ~ U(eps, T)``
        (continuous time).
      continuous: denoising score matching with ``t ~ U(eps, T)`` (True), or the
        discrete-time objective of the SDE's discrete model: DDPM for VP, SMLD for VE.
      likelihood_weighting: weight by ``g(t)^2`` instead of ``std(t)^2`` (continuous only).
      reduce_mean: per-example mean over the non-batch axes (True) or sum.
      eps: smallest training time, where the float32 marginal is still well conditioned.

    ``x`` is the clean (global) batch ``(B, ...)``; ``key`` draws all times and noise.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; known: {', '.join(OBJECTIVES)}")
    if continuous and not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    if objective == "edm":
        if not continuous or likelihood_weighting:
            raise ValueError("objective='edm' is continuous-time with its own weighting: "
                             "set continuous=True and likelihood_weighting=False")
        if not (p_std > 0 and sigma_data > 0):
            raise ValueError(f"objective='edm' needs p_std > 0 and sigma_data > 0, got "
                             f"p_std={p_std}, sigma_data={sigma_data}")
        edm.check_sigma_to_t(sde, "objective='edm'")
        return _edm_loss(sde, reduce_mean=reduce_mean, eps=eps, p_mean=p_mean, p_std=p_std,
                         sigma_data=sigma_data)
    if objective in _WEIGHTED_CONTINUOUS:
        if not continuous or likelihood_weighting:
            raise ValueError(f"objective={objective!r} is continuous-time with its own "
                             "weighting: set continuous=True and likelihood_weighting=False")
        return _WEIGHTED_CONTINUOUS[objective](sde, reduce_mean=reduce_mean, eps=eps)
    if continuous:
        return _continuous_loss(
            sde, likelihood_weighting=likelihood_weighting, reduce_mean=reduce_mean, eps=eps
        )
    if likelihood_weighting:
        raise ValueError("likelihood weighting is defined for continuous training only")
    for cls in type(sde).__mro__:
        if cls in DISCRETE_LOSSES:
            return DISCRETE_LOSSES[cls](sde, reduce_mean=reduce_mean)
    raise ValueError(
        f"discrete training is defined for VP (DDPM) and VE (SMLD), not {type(sde).__name__}"
    )
