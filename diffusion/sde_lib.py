"""Forward SDEs of score-based diffusion (VP, sub-VP, VE), the Gaussian paths of flow
matching (linear, cosine), and the registry that builds one from a config. The interface
they implement and its conventions (``SDE``, ``ReverseSDE``, ``batch_broadcast``) are in
diffusion/sde_base.py, and re-exported here.

The marginals are evaluated with ``expm1``/``log1p`` forms so that float32 stays accurate
at ``t ~ 1e-5``, where likelihoods are computed.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

# The interface, re-exported: callers name sde_lib.SDE, sde_lib.batch_broadcast, ...
from diffusion.sde_base import (
    SDE,
    ReverseSDE,
    TimeLike,
    _per_example_t,
    _round_index,
    _standard_normal_logp,
    batch_broadcast,
)
from diffusion.sde_base import ScoreFn as ScoreFn

Array = jax.Array

__all__ = [
    "SDE",
    "SDES",
    "VESDE",
    "VPSDE",
    "CosinePath",
    "GaussianPath",
    "LinearPath",
    "ReverseSDE",
    "ScoreFn",
    "batch_broadcast",
    "get_sde",
    "subVPSDE",
]


@dataclasses.dataclass(frozen=True)
class _VPFamily(SDE):
    """Shared linear noise schedule ``beta(t) = beta_min + t (beta_max - beta_min)``."""

    beta_min: float = 0.1
    beta_max: float = 20.0
    N: int = 1000

    def beta(self, t: Array) -> Array:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def beta_integral(self, t: Array) -> Array:
        """``B(t) = int_0^t beta(s) ds``."""
        return self.beta_min * t + 0.5 * t**2 * (self.beta_max - self.beta_min)

    def marginal_scale(self, t: Array) -> Array:
        return jnp.exp(-0.5 * self.beta_integral(t))

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape)

    def prior_logp(self, z: Array) -> Array:
        return _standard_normal_logp(z, 1.0)

    # DDPM tables (float64 on the host; indexed into with jnp they become float32).
    @functools.cached_property
    def discrete_betas(self) -> np.ndarray:
        return np.linspace(self.beta_min / self.N, self.beta_max / self.N, self.N)

    @functools.cached_property
    def alphas(self) -> np.ndarray:
        return 1.0 - self.discrete_betas

    @functools.cached_property
    def alphas_cumprod(self) -> np.ndarray:
        return np.cumprod(self.alphas)

    @functools.cached_property
    def sqrt_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(self.alphas_cumprod)

    @functools.cached_property
    def sqrt_1m_alphas_cumprod(self) -> np.ndarray:
        return np.sqrt(1.0 - self.alphas_cumprod)

    def discrete_index(self, t: Array) -> Array:
        """DDPM timestep ``round(t (N - 1))`` as int32."""
        return _round_index(t, self.N)


@dataclasses.dataclass(frozen=True)
class VPSDE(_VPFamily):
    """Variance-preserving SDE ``dx = -beta(t)/2 x dt + sqrt(beta(t)) dw`` (DDPM in the
    continuous limit). Marginal std ``sqrt(1 - exp(-B(t)))``.
    """

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        t = _per_example_t(t, x)
        beta = self.beta(t)
        return -0.5 * batch_broadcast(beta, x) * x, jnp.sqrt(beta)

    def marginal_std(self, t: Array) -> Array:
        return jnp.sqrt(-jnp.expm1(-self.beta_integral(t)))

    def discretize(self, x: Array, t: Array, dt: TimeLike | None = None) -> tuple[Array, Array]:
        """DDPM step ``x_t = sqrt(alpha) x_{t-dt} + sqrt(1 - alpha) z``.

        ``dt=None``: the model's own N-step chain, ``alpha = 1 - discrete_betas[round(t (N-1))]``.
        ``dt`` given: the exact transition of the continuous schedule over ``[t - dt, t]``,
        ``alpha = exp(-(B(t) - B(t - dt)))``, i.e. DDPM on an arbitrary time grid.
        """
        t = _per_example_t(t, x)
        # sqrt(alpha) - 1 in forms free of cancellation: alpha is within 1e-4 of 1.
        if dt is None:
            beta = jnp.asarray(self.discrete_betas, x.dtype)[self.discrete_index(t)]
            sqrt_alpha_m1 = -beta / (1.0 + jnp.sqrt(1.0 - beta))
        else:
            dt = _per_example_t(dt, x)
            log_alpha = -(self.beta_integral(t) - self.beta_integral(jnp.maximum(t - dt, 0.0)))
            beta = -jnp.expm1(log_alpha)
            sqrt_alpha_m1 = jnp.expm1(0.5 * log_alpha)
        return batch_broadcast(sqrt_alpha_m1, x) * x, jnp.sqrt(beta)


@dataclasses.dataclass(frozen=True)
class subVPSDE(_VPFamily):
    """Sub-variance-preserving SDE ``dx = -beta/2 x dt + sqrt(beta (1 - exp(-2 B(t)))) dw``.
    Marginal std ``1 - exp(-B(t))``, always below the VP one. Discretised with Euler.
    """

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        t = _per_example_t(t, x)
        beta = self.beta(t)
        diffusion = jnp.sqrt(beta * -jnp.expm1(-2.0 * self.beta_integral(t)))
        return -0.5 * batch_broadcast(beta, x) * x, diffusion

    def marginal_std(self, t: Array) -> Array:
        return -jnp.expm1(-self.beta_integral(t))


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
    """Variance-exploding SDE ``dx = sigma(t) sqrt(2 log(sigma_max / sigma_min)) dw`` with
    ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (SMLD/NCSN in the continuous limit).

    As in SMLD, the marginal at ``t`` is taken as ``N(x0, sigma(t)^2 I)``: the data are
    regarded as already carrying ``sigma_min`` noise, which keeps the family of marginals
    exactly consistent with the SDE.
    """

    sigma_min: float = 0.01
    sigma_max: float = 50.0
    N: int = 1000

    def sigma(self, t: Array) -> Array:
        """Noise level ``sigma(t)``."""
        return jnp.exp(math.log(self.sigma_min) + t * math.log(self.sigma_max / self.sigma_min))

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        t = _per_example_t(t, x)
        diffusion = self.sigma(t) * math.sqrt(2.0 * math.log(self.sigma_max / self.sigma_min))
        return jnp.zeros_like(x), diffusion

    def marginal_scale(self, t: Array) -> Array:
        return jnp.ones_like(t)

    def marginal_std(self, t: Array) -> Array:
        return self.sigma(t)

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape) * self.sigma_max

    def prior_logp(self, z: Array) -> Array:
        return _standard_normal_logp(z, self.sigma_max)

    @functools.cached_property
    def discrete_sigmas(self) -> np.ndarray:
        return np.exp(np.linspace(np.log(self.sigma_min), np.log(self.sigma_max), self.N))

    def discrete_index(self, t: Array) -> Array:
        """SMLD noise-level index ``round(t (N - 1))`` as int32."""
        return _round_index(t, self.N)

    def discretize(self, x: Array, t: Array, dt: TimeLike | None = None) -> tuple[Array, Array]:
        """SMLD step ``x_t = x_{t-dt} + sqrt(sigma(t)^2 - sigma(t-dt)^2) z``.

        ``dt=None``: the N-level ladder ``discrete_sigmas`` (the step below level 0 adds
        ``sigma_0`` itself). ``dt`` given: the continuous ``sigma(t)`` over ``[t - dt, t]``.
        """
        t = _per_example_t(t, x)
        if dt is None:
            sigmas = jnp.asarray(self.discrete_sigmas, x.dtype)
            i = self.discrete_index(t)
            sigma = sigmas[i]
            previous = jnp.where(i == 0, 0.0, sigmas[jnp.maximum(i - 1, 0)])
            variance = sigma**2 - previous**2
        else:
            dt = _per_example_t(dt, x)
            # sigma(t)^2 (1 - (sigma(t-dt)/sigma(t))^2), stable when dt is small.
            log_ratio = math.log(self.sigma_max / self.sigma_min)
            variance = self.sigma(t) ** 2 * -jnp.expm1(-2.0 * jnp.minimum(dt, t) * log_ratio)
        return jnp.zeros_like(x), jnp.sqrt(variance)


class GaussianPath(SDE):
    """A deterministic interpolation ``x_t = alpha(t) x0 + sigma(t) z`` from the data
    (``alpha(0) = 1``, ``sigma(0) = 0``) to noise (``alpha(1) = 0``, ``sigma(1) = 1``): the
    probability paths of flow matching (Lipman et al., 2023; Liu et al., 2023).

    As an SDE it is the linear one with the same marginals, ``f = (alpha'/alpha) x`` and
    ``g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2``, so the probability-flow drift
    ``f - g^2 score / 2`` is the velocity ``E[alpha' x0 + sigma' z | x_t]`` and every ODE
    sampler and the likelihood serve it unchanged. ``alpha(1) = 0`` makes ``f`` singular at
    ``t = 1`` (and the score there forgets the data), so the path stops at ``T = 1 - 1e-3``
    with the prior ``N(0, sigma(T)^2 I)``; ``ode_only``: reverse-SDE samplers refuse it.
    """

    ode_only: ClassVar[bool] = True

    @property
    def T(self) -> float:
        return 1.0 - 1e-3

    @abc.abstractmethod
    def marginal_derivatives(self, t: Array) -> tuple[Array, Array]:
        """``(alpha'(t), sigma'(t))``, each the shape of ``t``."""

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        t = _per_example_t(t, x)
        alpha, sigma = self.marginal_scale(t), self.marginal_std(t)
        d_alpha, d_sigma = self.marginal_derivatives(t)
        log_rate = d_alpha / alpha
        g2 = 2.0 * sigma * d_sigma - 2.0 * log_rate * sigma**2
        return batch_broadcast(log_rate, x) * x, jnp.sqrt(g2)

    @property
    def prior_std(self) -> float:
        """``sigma(T)``, the prior's std (a Python float, also while tracing)."""
        with jax.ensure_compile_time_eval():
            return float(self.marginal_std(jnp.asarray(self.T, jnp.float32)))

    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        return jax.random.normal(key, shape) * self.prior_std

    def prior_logp(self, z: Array) -> Array:
        return _standard_normal_logp(z, self.prior_std)


@dataclasses.dataclass(frozen=True)
class LinearPath(GaussianPath):
    """Rectified flow / optimal-transport path ``x_t = (1 - t) x0 + t z``; velocity
    ``z - x0``. ``N`` is the default step count of the first-order samplers."""

    N: int = 1000

    def marginal_scale(self, t: Array) -> Array:
        return 1.0 - t

    def marginal_std(self, t: Array) -> Array:
        return jnp.asarray(t)

    def marginal_derivatives(self, t: Array) -> tuple[Array, Array]:
        return -jnp.ones_like(t), jnp.ones_like(t)


@dataclasses.dataclass(frozen=True)
class CosinePath(GaussianPath):
    """Trigonometric path ``x_t = cos(pi t / 2) x0 + sin(pi t / 2) z`` (variance
    preserving for unit-variance data); velocity ``pi/2 (cos(pi t/2) z - sin(pi t/2) x0)``."""

    N: int = 1000

    def marginal_scale(self, t: Array) -> Array:
        return jnp.cos(0.5 * math.pi * t)

    def marginal_std(self, t: Array) -> Array:
        return jnp.sin(0.5 * math.pi * t)

    def marginal_derivatives(self, t: Array) -> tuple[Array, Array]:
        angle = 0.5 * math.pi * t
        return -0.5 * math.pi * jnp.sin(angle), 0.5 * math.pi * jnp.cos(angle)


SDES: dict[str, type[SDE]] = {"vpsde": VPSDE, "subvpsde": subVPSDE, "vesde": VESDE,
                              "linear_path": LinearPath, "cosine_path": CosinePath}

# config.model field read for each constructor argument.
_CONFIG_FIELDS = {
    "beta_min": "beta_min",
    "beta_max": "beta_max",
    "sigma_min": "sigma_min",
    "sigma_max": "sigma_max",
    "N": "num_scales",
}


def get_sde(config: Any) -> SDE:
    """Build the SDE (or flow path: 'linear_path', 'cosine_path') named by
    ``config.training.sde`` from ``config.model``'s
    ``beta_min``/``beta_max`` or ``sigma_min``/``sigma_max`` and ``num_scales`` (a missing
    field keeps the class default).
    """
    name = str(config.training.sde).lower()
    if name not in SDES:
        raise ValueError(f"unknown SDE {config.training.sde!r}; known: {sorted(SDES)}")
    cls = SDES[name]
    kwargs = {}
    for field in dataclasses.fields(cls):
        key = _CONFIG_FIELDS[field.name]
        if hasattr(config.model, key):
            kwargs[field.name] = getattr(config.model, key)
    return cls(**kwargs)
