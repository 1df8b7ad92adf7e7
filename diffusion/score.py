"""Score functions: a network's output turned into ``score(x, t) = grad_x log p_t(x)``, and
closed-form scores of Gaussian mixtures (exact references for samplers and tests).

The network side of the contract (docs/CONTRACTS.md) is ``net_fn(x, c_noise) -> output``
with ``c_noise`` a float ``(B,)`` chosen here:

=============  ==========================  ===============================================
SDE            ``c_noise``                 score from the output
=============  ==========================  ===============================================
VP, sub-VP     ``999 t`` (continuous),     ``-output / std`` (output predicts the noise)
               ``t (N-1)`` (discrete VP)
VE             ``log sigma(t)``            ``output / sigma`` (output is the scaled score)
=============  ==========================  ===============================================

``preconditioning='edm'`` (Karras et al., 2022, Table 1) reads the output ``F`` as EDM's
denoiser ``D(x_hat) = c_skip x_hat + c_out F(c_in x_hat, c_noise)`` in ``x_hat = x / s(t)``
at ``sigma(t) = std / s`` (the same ``c_noise`` as above), whatever the SDE. With
``v = sigma^2 + sigma_data^2``: ``c_in = 1 / sqrt(v)``, ``c_skip = sigma_data^2 / v``,
``c_out = sigma sigma_data / sqrt(v)``; the score is ``(D - x_hat) / (sigma^2 s)``, written
as ``(sigma_data F / (sigma sqrt(v)) - x_hat / v) / s`` so that no difference of nearly
equal terms is taken at small ``sigma``. The network's input and its regression target
have unit variance at every noise level, and ``F = 0`` is the exact score of data
``N(0, sigma_data^2 I)``.

``preconditioning='velocity'`` reads the output as the velocity ``dx_t/dt`` of the SDE's
Gaussian path (flow matching; the exact conversion is ``flows.score_from_velocity``).

``preconditioning='v'`` reads it as Salimans & Ho's ``v = alpha z - sigma x0``
(v-prediction; ``v_prediction.score_from_v``), beside ``'none'``'s noise prediction and the
score itself (VE).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp

from diffusion import flows, sde_lib, v_prediction
from diffusion.sde_lib import SDE, VESDE, VPSDE, GaussianPath, batch_broadcast, subVPSDE

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
NetFn = Callable[[Array, Array], Array]

__all__ = [
    "PRECONDITIONINGS",
    "check_preconditioning",
    "get_score_fn",
    "mixture_score_fn",
    "noise_conditioning",
    "output_scale",
]


@dataclasses.dataclass(frozen=True)
class _Parametrisation:
    """How one SDE family conditions the network and reads a score off its output.

    ``c_noise(sde, t)`` and ``std(sde, t)`` take ``t`` ``(B,)``; the score is
    ``sign * output / std``.
    """

    c_noise: Callable[[SDE, Array], Array]
    std: Callable[[SDE, Array], Array]
    sign: float


def _ddpm_std(sde: VPSDE, t: Array) -> Array:
    table = jnp.asarray(sde.sqrt_1m_alphas_cumprod, t.dtype)
    return table[sde.discrete_index(t)]


_CONTINUOUS_VP = _Parametrisation(
    c_noise=lambda sde, t: 999.0 * t, std=lambda sde, t: sde.marginal_std(t), sign=-1.0
)
_VE = _Parametrisation(
    c_noise=lambda sde, t: jnp.log(sde.marginal_std(t)),
    std=lambda sde, t: sde.marginal_std(t),
    sign=1.0,
)

# (SDE class, continuous) -> parametrisation. Missing pairs have no defined parametrisation.
_PARAMETRISATIONS: dict[tuple[type[SDE], bool], _Parametrisation] = {
    (VPSDE, True): _CONTINUOUS_VP,
    (VPSDE, False): _Parametrisation(
        c_noise=lambda sde, t: t * (sde.N - 1), std=_ddpm_std, sign=-1.0
    ),
    (subVPSDE, True): _CONTINUOUS_VP,
    (VESDE, True): _VE,
    (VESDE, False): _VE,
    (GaussianPath, True): _CONTINUOUS_VP,  # flow-matching paths: 999 t, as VP
}


def _parametrisation(sde: SDE, continuous: bool) -> _Parametrisation:
    for cls in type(sde).__mro__:
        if (cls, continuous) in _PARAMETRISATIONS:
            return _PARAMETRISATIONS[cls, continuous]
    kind = "continuous" if continuous else "discrete"
    raise ValueError(
        f"no {kind} score parametrisation for {type(sde).__name__}; discrete-time models "
        "are defined for VP (DDPM) and VE (SMLD)"
    )


def _as_batch_t(t: Array, x: Array) -> Array:
    return jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])


def noise_conditioning(sde: SDE, t: Array, continuous: bool = True) -> Array:
    """The network's noise-conditioning input ``c_noise`` ``(B,)`` at times ``t`` ``(B,)``."""
    t = jnp.asarray(t)
    return _parametrisation(sde, continuous).c_noise(sde, t)


def output_scale(sde: SDE, t: Array, continuous: bool = True) -> Array:
    """``score = output_scale * output``: ``-1/std`` for VP-type, ``1/sigma`` for VE; ``(B,)``.

    Losses use it to write noise-prediction targets through a score function.
    """
    p = _parametrisation(sde, continuous)
    t = jnp.asarray(t)
    return p.sign / p.std(sde, t)


def _plain_score_fn(sde: SDE, net_fn: NetFn, p: _Parametrisation, sigma_data: float):
    def score_fn(x: Array, t: Array) -> Array:
        t = _as_batch_t(t, x)
        output = net_fn(x, p.c_noise(sde, t))
        return output * batch_broadcast(p.sign / p.std(sde, t), x)

    return score_fn


def _edm_score_fn(sde: SDE, net_fn: NetFn, p: _Parametrisation, sigma_data: float):
    def score_fn(x: Array, t: Array) -> Array:
        t = _as_batch_t(t, x)
        scale = batch_broadcast(sde.marginal_scale(t), x)
        sigma = batch_broadcast(sde.marginal_std(t), x) / scale
        var = sigma**2 + sigma_data**2
        x_hat = x / scale
        output = net_fn(x_hat * jax.lax.rsqrt(var), p.c_noise(sde, t))
        score_hat = sigma_data * output / (sigma * jnp.sqrt(var)) - x_hat / var
        return score_hat / scale

    return score_fn


# model.preconditioning -> how the network's output becomes a score.
PRECONDITIONINGS: dict[str, Callable[..., ScoreFn]] = {
    "none": _plain_score_fn,
    "edm": _edm_score_fn,
    # The output is the velocity d x_t / dt of the SDE's path (flow matching; flows.py).
    "velocity": flows.velocity_score_fn,
    # The output is v = alpha z - sigma x0 (v-prediction; v_prediction.py).
    "v": v_prediction.v_score_fn,
}


def check_preconditioning(preconditioning: str, *, continuous: bool, sigma_data: float) -> None:
    """ValueError unless ``preconditioning`` is known and serves these settings."""
    if preconditioning not in PRECONDITIONINGS:
        raise ValueError(
            f"unknown preconditioning {preconditioning!r}; known: {sorted(PRECONDITIONINGS)}"
        )
    if preconditioning != "none" and not continuous:
        raise ValueError(f"preconditioning={preconditioning!r} needs continuous training")
    if not sigma_data > 0:
        raise ValueError(f"sigma_data must be positive, got {sigma_data}")


def get_score_fn(
    sde: SDE,
    net_fn: NetFn,
    *,
    continuous: bool = True,
    preconditioning: str = "none",
    sigma_data: float = 0.5,
) -> ScoreFn:
    """Wrap ``net_fn(x, c_noise)`` into ``score_fn(x, t)`` for ``sde``.

    ``continuous=False`` gives the discrete-time (DDPM) reading for VP: ``c_noise`` is the
    timestep ``t (N-1)`` and the std comes from the DDPM table at ``round(t (N-1))``. VE is the
    same either way (``c_noise = log sigma``). Sub-VP has no discrete form (ValueError).
    ``preconditioning`` is ``'none'`` (score_sde's reading, table above) or ``'edm'``
    (EDM's denoiser with data std ``sigma_data``; continuous time only).
    """
    check_preconditioning(preconditioning, continuous=continuous, sigma_data=sigma_data)
    p = _parametrisation(sde, continuous)
    return PRECONDITIONINGS[preconditioning](sde, net_fn, p, float(sigma_data))


def mixture_score_fn(
    sde: SDE,
    means: Array | Sequence[Sequence[float]],
    stds: Array | Sequence[float],
    weights: Array | Sequence[float] | None = None,
) -> ScoreFn:
    """Exact score of ``p_t`` when the data are a mixture of isotropic Gaussians.

    Component ``k`` of the data, ``N(means[k], stds[k]^2 I)`` on the flattened example, is
    carried by the SDE to ``N(scale(t) means[k], (scale(t)^2 stds[k]^2 + std(t)^2) I)``;
    the score is the responsibility-weighted sum of the component scores. One component
    gives the Gaussian case. ``means`` is ``(K, D)`` with ``D`` the flattened example size.
    """
    means = jnp.asarray(means, jnp.float32)
    stds = jnp.asarray(stds, jnp.float32)
    k, d = means.shape
    if stds.shape != (k,):
        raise ValueError(f"stds must have shape ({k},), got {stds.shape}")
    weights = jnp.full((k,), 1.0 / k) if weights is None else jnp.asarray(weights, jnp.float32)
    log_weights = jnp.log(weights / jnp.sum(weights))

    def score_fn(x: Array, t: Array) -> Array:
        t = _as_batch_t(t, x)
        flat = x.reshape(x.shape[0], -1)
        if flat.shape[1] != d:
            raise ValueError(f"examples have {flat.shape[1]} values, the mixture has {d}")
        scale = sde.marginal_scale(t)[:, None]  # (B, 1)
        var = scale**2 * stds[None, :] ** 2 + sde.marginal_std(t)[:, None] ** 2  # (B, K)
        diff = scale[:, :, None] * means[None] - flat[:, None, :]  # (B, K, D): mu_k - x
        log_resp = log_weights - 0.5 * d * jnp.log(var) - 0.5 * jnp.sum(diff**2, axis=-1) / var
        resp = jax.nn.softmax(log_resp, axis=-1)
        score = jnp.sum((resp / var)[:, :, None] * diff, axis=1)
        return score.reshape(x.shape).astype(x.dtype)

    return score_fn
