"""Variational bounds of a VAE with a diagonal Gaussian encoder and a N(0, I) prior.

``encode_fn(x) -> (mean, logvar)`` gives q(z | x) = N(mean, exp(logvar)) (any latent
shape with the batch first); ``decode_log_prob_fn(z, x) -> (B,)`` is log p(x | z) in nats,
e.g. a decoder network followed by a likelihood of :mod:`vae.likelihoods`. Both close over
their parameters. With discrete data and a discretised (or Bernoulli) decoder, every bound
here is a lower bound on the log-probability of the data itself.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.scipy.special import logsumexp

Array = jax.Array
EncodeFn = Callable[[Array], tuple[Array, Array]]
DecodeLogProbFn = Callable[[Array, Array], Array]

__all__ = [
    "bits_per_dim",
    "elbo_terms",
    "free_bits_kl",
    "gaussian_kl",
    "iwae_bound",
    "kl_weight",
]

_LOG_2PI = math.log(2.0 * math.pi)


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _kl_per_dim(mean: Array, logvar: Array) -> Array:
    return 0.5 * (jnp.exp(logvar) + jnp.square(mean) - 1.0 - logvar)


def gaussian_kl(mean: Array, logvar: Array) -> Array:
    """KL(N(mean, exp(logvar)) || N(0, I)) in nats, summed over the latent dims: (B,)."""
    return _sum_non_batch(_kl_per_dim(mean, logvar))


def kl_weight(step: Array | int, beta: float, warmup_steps: int) -> Array:
    """KL weight rising linearly from 0 at step 0 to ``beta`` at ``warmup_steps``, then
    constant (``warmup_steps = 0``: ``beta`` from the start). ``step`` may be traced."""
    if beta < 0:
        raise ValueError(f"beta must be non-negative, got {beta}")
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be non-negative, got {warmup_steps}")
    if warmup_steps == 0:
        return jnp.asarray(beta, jnp.float32)
    ramp = jnp.clip(jnp.asarray(step, jnp.float32) / warmup_steps, 0.0, 1.0)
    return beta * ramp


def free_bits_kl(kl_per_dim: Array, free_bits: float) -> Array:
    """Per-example KL (B,) with free bits (Kingma et al. 2016, IAF), for the objective.

    ``kl_per_dim (B, ..., C)``: elementwise KL; each latent channel (last axis) is one
    group, its KL summed over the other latent axes. A channel whose batch-mean KL is
    below ``free_bits`` nats contributes the constant ``free_bits`` (no gradient) instead,
    so the batch mean of the result is ``sum_c max(free_bits, mean_batch KL_c)``: the
    encoder is not pushed to collapse channels that carry little information. Report the
    plain KL, not this, as the bound.
    """
    if free_bits < 0:
        raise ValueError(f"free_bits must be non-negative, got {free_bits}")
    if kl_per_dim.ndim < 2:
        raise ValueError(f"kl_per_dim must be (B, ..., C), got shape {kl_per_dim.shape}")
    per_channel = jnp.sum(kl_per_dim, axis=tuple(range(1, kl_per_dim.ndim - 1)))  # (B, C)
    active = jnp.mean(per_channel, axis=0) >= free_bits
    return jnp.sum(jnp.where(active, per_channel, jnp.asarray(free_bits, per_channel.dtype)), 1)


def elbo_terms(
    key: Array, encode_fn: EncodeFn, decode_log_prob_fn: DecodeLogProbFn, x: Array
) -> dict[str, Array]:
    """The ELBO with one reparameterised sample and the analytic KL.

    Returns ``elbo`` (B,) = ``log_px - kl``, ``log_px`` (B,) = log p(x | z) at
    z = mean + exp(logvar / 2) eps, ``kl`` (B,) and ``kl_per_dim`` (the latent's shape,
    for :func:`free_bits_kl`). Gradients reach both networks through z.
    """
    mean, logvar = encode_fn(x)
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
    log_px = decode_log_prob_fn(z, x)
    kl_per_dim = _kl_per_dim(mean, logvar)
    kl = _sum_non_batch(kl_per_dim)
    return {"elbo": log_px - kl, "log_px": log_px, "kl": kl, "kl_per_dim": kl_per_dim}


def iwae_bound(
    key: Array,
    encode_fn: EncodeFn,
    decode_log_prob_fn: DecodeLogProbFn,
    x: Array,
    num_samples: int = 64,
    chunk: int | None = None,
) -> Array:
    """Importance-weighted bound (Burda et al. 2016) with K = ``num_samples``: (B,) nats.

        log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k ~ q(z | x) independent,

    a lower bound on log p(x) that equals the ELBO in expectation at K = 1 and rises to
    log p(x) as K grows. The encoder runs once; the decoder runs K times, vmapped over
    ``chunk`` samples at a time (default: all at once) to bound memory. The result does
    not depend on ``chunk``: sample k always uses the k-th subkey of ``key``.
    """
    if isinstance(num_samples, bool) or int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    num_samples = int(num_samples)
    chunk = num_samples if chunk is None else chunk
    if isinstance(chunk, bool) or int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}")
    chunk = min(int(chunk), num_samples)
    mean, logvar = encode_fn(x)
    std = jnp.exp(0.5 * logvar)

    def log_weight(sample_key: Array) -> Array:
        eps = jax.random.normal(sample_key, mean.shape, mean.dtype)
        z = mean + std * eps
        # log N(z; mean, std^2) with (z - mean) / std = eps exactly.
        log_q = _sum_non_batch(-0.5 * (jnp.square(eps) + logvar + _LOG_2PI))
        log_prior = _sum_non_batch(-0.5 * (jnp.square(z) + _LOG_2PI))
        return decode_log_prob_fn(z, x) + log_prior - log_q

    keys = jax.random.split(key, num_samples)
    full = num_samples // chunk * chunk
    parts = []
    if full:
        chunked = keys[:full].reshape(full // chunk, chunk, *keys.shape[1:])
        parts.append(jax.lax.map(jax.vmap(log_weight), chunked).reshape(full, -1))
    if full < num_samples:
        parts.append(jax.vmap(log_weight)(keys[full:]))
    log_w = jnp.concatenate(parts, axis=0)  # (K, B)
    return logsumexp(log_w, axis=0) - math.log(num_samples)


def bits_per_dim(nats: Array, num_dims: int) -> Array:
    """``-nats / (num_dims ln 2)``: bits/dim (B,) of log-probabilities ``nats`` (B,).

    The data are discrete and the decoders of :mod:`vae.likelihoods` assign probabilities
    (not densities) to them, so a bound in nats is a bound on log P(data) and needs no
    dequantisation offset, unlike :func:`diffusion.likelihood.bits_per_dim`; lower bounds on
    log P become upper bounds on bits/dim.
    """
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive, got {num_dims}")
    return -jnp.asarray(nats) / (num_dims * math.log(2.0))
