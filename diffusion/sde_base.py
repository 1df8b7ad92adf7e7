"""The SDE interface every diffusion method is written against: the abstract forward
``SDE``, its reverse (``ReverseSDE``, the probability flow included) and the batch
conventions they share (diffusion/sde_lib.py holds the concrete SDEs and paths).

* ``x`` is a batch ``(B, ...)`` of any rank (NHWC images, 2-D points).
* ``t`` is a float array ``(B,)`` (a scalar is broadcast to the batch) on ``[0, T]``, T = 1.
* Per-example scalars (diffusion coefficient, marginal std) are returned with shape
  ``(B,)``; use :func:`batch_broadcast` to multiply them into ``x``.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp

Array = jax.Array
ScoreFn = Callable[[Array, Array], Array]
TimeLike = Array | float

__all__ = ["SDE", "ReverseSDE", "ScoreFn", "batch_broadcast"]


def batch_broadcast(v: Array, x: Array) -> Array:
    """Reshape a per-example ``(B,)`` array so it broadcasts against ``x`` ``(B, ...)``."""
    v = jnp.asarray(v)
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _per_example_t(t: Any, x: Array) -> Array:
    """``t`` as a ``(B,)`` array in ``x``'s float dtype (scalars are broadcast)."""
    dtype = x.dtype if jnp.issubdtype(x.dtype, jnp.floating) else jnp.float32
    return jnp.broadcast_to(jnp.asarray(t, dtype), x.shape[:1])


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _standard_normal_logp(z: Array, scale: float) -> Array:
    d = math.prod(z.shape[1:])
    return -0.5 * d * math.log(2 * math.pi * scale**2) - _sum_non_batch(z**2) / (2 * scale**2)


def _round_index(t: Array, n: int) -> Array:
    # round, not truncate: i / (N - 1) * (N - 1) can land a hair below i in float32.
    return jnp.clip(jnp.round(t * (n - 1)), 0, n - 1).astype(jnp.int32)


class SDE(abc.ABC):
    """A forward SDE ``dx = f(x, t) dt + g(t) dw`` on ``[0, T]`` with Gaussian marginals
    ``p_t(x | x0) = N(scale(t) x0, std(t)^2 I)``.

    Subclasses provide the drift/diffusion, the marginal coefficients and the prior; the
    rest (``marginal_prob``, Euler ``discretize``, ``reverse``) is shared.
    """

    N: int
    # True for a deterministic path (flow matching): the family of marginals is defined but
    # only its probability-flow ODE is sampled, so reverse-SDE samplers refuse it.
    ode_only: ClassVar[bool] = False

    @property
    def T(self) -> float:
        """End time of the forward process."""
        return 1.0

    @abc.abstractmethod
    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Drift ``(B, ...)`` and diffusion coefficient ``g(t)`` ``(B,)`` at ``(x, t)``."""

    @abc.abstractmethod
    def marginal_scale(self, t: Array) -> Array:
        """Mean coefficient ``scale(t)`` of ``p_t(x | x0)``; same shape as ``t``."""

    @abc.abstractmethod
    def marginal_std(self, t: Array) -> Array:
        """Noise level ``std(t)`` of ``p_t(x | x0)``; same shape as ``t``."""

    @abc.abstractmethod
    def prior_sampling(self, key: Array, shape: tuple[int, ...]) -> Array:
        """A sample of the prior ``p_T`` with the full (batch-included) ``shape``."""

    @abc.abstractmethod
    def prior_logp(self, z: Array) -> Array:
        """Log density of the prior in nats, per example ``(B,)``."""

    def marginal_prob(self, x0: Array, t: Array) -> tuple[Array, Array]:
        """Mean ``(B, ...)`` and std ``(B,)`` of the perturbation kernel ``p_t(x | x0)``."""
        t = _per_example_t(t, x0)
        return batch_broadcast(self.marginal_scale(t), x0) * x0, self.marginal_std(t)

    def discretize(self, x: Array, t: Array, dt: TimeLike | None = None) -> tuple[Array, Array]:
        """One forward step ``x_{t} = x_{t-dt} + f + G z`` as ``(f (B, ...), G (B,))``.

        The default is Euler–Maruyama with ``dt = 1/N``. VP and VE override it with their
        DDPM/SMLD discretisations.
        """
        dt = 1.0 / self.N if dt is None else dt
        drift, diffusion = self.sde(x, t)
        dt = _per_example_t(dt, x)
        return drift * batch_broadcast(dt, x), diffusion * jnp.sqrt(dt)

    def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
        """The reverse-time SDE (or probability-flow ODE) driven by ``score_fn(x, t)``."""
        return ReverseSDE(self, score_fn, probability_flow)


@dataclasses.dataclass(frozen=True)
class ReverseSDE:
    """Reverse of ``forward``: drift ``f - c g^2 score`` (c = 1, or 1/2 for the probability
    flow, whose diffusion is 0). Time still runs forward in the arguments; samplers integrate
    it from ``T`` down to ``eps``.
    """

    forward: SDE
    score_fn: ScoreFn
    probability_flow: bool = False

    @property
    def N(self) -> int:
        return self.forward.N

    @property
    def T(self) -> float:
        return self.forward.T

    @property
    def _score_weight(self) -> float:
        return 0.5 if self.probability_flow else 1.0

    def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
        """Reverse drift ``(B, ...)`` and diffusion ``(B,)``."""
        t = _per_example_t(t, x)
        drift, diffusion = self.forward.sde(x, t)
        score = self.score_fn(x, t)
        drift = drift - batch_broadcast(diffusion**2, x) * score * self._score_weight
        return drift, jnp.zeros_like(diffusion) if self.probability_flow else diffusion

    def discretize(self, x: Array, t: Array, dt: TimeLike | None = None) -> tuple[Array, Array]:
        """Reverse of the forward discretisation: ``x_{t-dt} = x_t - f + G z``."""
        t = _per_example_t(t, x)
        f, g = self.forward.discretize(x, t, dt)
        score = self.score_fn(x, t)
        f = f - batch_broadcast(g**2, x) * score * self._score_weight
        return f, jnp.zeros_like(g) if self.probability_flow else g
