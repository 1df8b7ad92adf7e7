"""Reflow (Liu et al., 2023, "Flow Straight and Fast"): couple noise with images through a
trained model's deterministic probability flow, then train a flow on the coupled pairs.

A flow trained on independent (image, noise) pairs learns crossing paths, which the ODE
can only follow with many small steps. Its own ODE maps each noise ``z`` to one image
``x0 = Phi(z)``; regressing ``z - x0`` on ``x_t = (1 - t) x0 + t z`` for those pairs
gives paths that do not cross, nearly straight, which a few Euler steps follow.

- :func:`pair_drawer`: ``draw(key, score_fn) -> (z, x0)`` through any deterministic
  sampler of :data:`sampling.ODE_SAMPLERS` (each starts from ``sde.prior_sampling(key,
  shape)``, ode_samplers.py's contract, and is deterministic after it);
- :func:`paired_flow_matching_loss`: flow matching's loss on given pairs, on the SDE's
  (path's) marginals as diffusion/losses.py's ``flow_matching`` is.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import losses, sampling
from diffusion.sampler_common import Sampler, ScoreFn
from diffusion.sde_lib import SDE

Array = jax.Array

__all__ = ["check_deterministic", "pair_drawer", "paired_flow_matching_loss"]


def check_deterministic(name: str) -> None:
    """ValueError unless sampler ``name`` is deterministic after its prior draw (a pair
    needs the noise it started from)."""
    if name not in sampling.ODE_SAMPLERS:
        raise ValueError(f"sampler {name!r} is stochastic: reflow pairs need a deterministic "
                         f"one ({', '.join(sampling.ODE_SAMPLERS)})")


def pair_drawer(sde: SDE, shape: tuple[int, ...], name: str, sampler: Sampler
                ) -> Callable[[Array, ScoreFn], tuple[Array, Array, Array]]:
    """``draw(key, score_fn) -> (z, x0, nfe)``: the prior draw ``z`` of ``shape`` that the
    deterministic sampler ``sampler`` (named ``name``) starts from with ``key``, and the
    image ``x0`` it ends at (in the data space: unclipped, unquantised)."""
    check_deterministic(name)

    def draw(key: Array, score_fn: ScoreFn) -> tuple[Array, Array, Array]:
        x0, nfe = sampler(key, score_fn)
        return sde.prior_sampling(key, shape), x0, jnp.asarray(nfe)

    return draw


def paired_flow_matching_loss(sde: SDE, *, reduce_mean: bool, eps: float
                              ) -> Callable[[ScoreFn, Array, Array, Array], Array]:
    """``loss_fn(score_fn, key, x0, z)``: flow matching on the pairs ``(x0, z)`` (the same
    leading batch axis): ``t ~ U(eps, T)`` per example (from ``key``), ``x_t = alpha_t x0 +
    std_t z`` and the velocity residual through the score, as the unpaired loss reads it;
    zero for a model whose velocity at ``x_t`` is the pair's ``alpha' x0 + std' z``."""
    reduce = losses.reducer(reduce_mean)

    def loss_fn(score_fn: ScoreFn, key: Array, x0: Array, z: Array) -> Array:
        t = jax.vmap(lambda k: jax.random.uniform(k, (), x0.dtype, eps, sde.T))(
            losses.example_keys(key, x0.shape[0]))
        return jnp.mean(reduce(jnp.square(losses.flow_matching_error(sde, score_fn, x0, z, t))))

    return loss_fn
