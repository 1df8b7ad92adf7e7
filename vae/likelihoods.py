"""Decoder likelihoods of discrete images, in nats per example summed over dimensions.

Binarised data ``x`` in {0, 1} take a Bernoulli decoder. Data quantised to ``num_bins``
evenly spaced levels on [-1, 1] (8-bit images: 256 levels, spacing 2/255) take a
discretised logistic (PixelCNN++, Salimans et al. 2017) or Gaussian: the probability of
level ``x`` is the CDF mass of the bin ``[x - 1/(num_bins - 1), x + 1/(num_bins - 1)]``,
the lowest and highest levels taking the tails, so the probabilities over all levels sum
to 1 and their logs bound the log-probability of the discrete data without any
dequantisation offset.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.nn import log_sigmoid
from jax.scipy.special import log_ndtr

Array = jax.Array

__all__ = [
    "DECODER_LIKELIHOODS",
    "DecoderLikelihood",
    "bernoulli_log_prob",
    "discretized_gaussian_log_prob",
    "discretized_logistic_log_prob",
    "mean_image",
    "sample_image",
]

# Below this bin width relative to the scale (times 1 + |z|) a Gaussian bin's mass comes
# from its Taylor expansion about the centre, whose truncation error there is ~1e-8, while
# the difference of two nearly equal log-CDFs would lose float32 digits.
_GAUSSIAN_SERIES_BELOW = 0.5


def _sum_non_batch(v: Array) -> Array:
    return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def _check_bins(num_bins: int) -> None:
    if isinstance(num_bins, bool) or int(num_bins) != num_bins or num_bins < 2:
        raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")


def _log1mexp(r: Array) -> Array:
    """log(1 - exp(r)) for r < 0, accurate both near 0 and far below it."""
    near_zero = r > -math.log(2.0)
    # Each branch gets an input valid for it, so the dropped one has a finite gradient.
    r_near = jnp.where(near_zero, r, -1.0)
    r_far = jnp.where(near_zero, -1.0, r)
    return jnp.where(near_zero, jnp.log(-jnp.expm1(r_near)), jnp.log1p(-jnp.exp(r_far)))


def bernoulli_log_prob(logits: Array, x: Array) -> Array:
    """``log p(x) (B,)`` of binary ``x`` in {0, 1} under Bernoulli(sigmoid(logits))."""
    return _sum_non_batch(x * logits - jax.nn.softplus(logits))


def _logistic_bin(
    upper: Array, lower: Array, width: Array, log_scale: Array, half_width: float
) -> Array:
    # sigmoid(u) - sigmoid(l) = sigmoid(u) sigmoid(-l) (1 - exp(l - u)) exactly, and each
    # factor is evaluated in log space without cancellation, in the bulk and in both tails:
    # no fallback is needed.
    del log_scale, half_width
    return log_sigmoid(upper) + log_sigmoid(-lower) + jnp.log(-jnp.expm1(-width))


def _gaussian_bin(
    upper: Array, lower: Array, width: Array, log_scale: Array, half_width: float
) -> Array:
    # Reflect each bin onto the lower half, where the CDF is small and log_ndtr accurate:
    # mass = Phi(hi) - Phi(lo) with lo < hi and lo + hi <= 0.
    left = upper + lower <= 0.0
    hi = jnp.where(left, upper, -lower)
    lo = jnp.where(left, lower, -upper)
    # Clamped below 0 so that the branch the where drops stays finite, gradient included,
    # where the two log-CDFs round to the same value.
    ratio = jnp.minimum(log_ndtr(lo) - log_ndtr(hi), -1e-30)
    log_diff = log_ndtr(hi) + _log1mexp(ratio)
    # The safe fallback for bins narrower than the scale: the integral of the density over
    # [z - w/2, z + w/2] is w phi(z) (1 + w^2 He2(z) / 24 + w^4 He4(z) / 1920 + ...), where
    # He2 = z^2 - 1 and He4 = z^4 - 6 z^2 + 3 are the Hermite polynomials.
    z = 0.5 * (upper + lower)
    use_series = width * (1.0 + jnp.abs(z)) < _GAUSSIAN_SERIES_BELOW
    # Where the series is not used it may drop below -1; zero inputs keep log1p defined.
    z2 = jnp.where(use_series, jnp.square(z), 0.0)
    w2 = jnp.where(use_series, jnp.square(width), 0.0)
    series = w2 * (z2 - 1.0) / 24.0 + jnp.square(w2) * (jnp.square(z2) - 6.0 * z2 + 3.0) / 1920.0
    log_series = (
        -0.5 * jnp.square(z)
        - 0.5 * math.log(2.0 * math.pi)
        - log_scale
        + math.log(2.0 * half_width)
        + jnp.log1p(series)
    )
    return jnp.where(use_series, log_series, log_diff)


def _discretized(
    log_cdf: Callable[[Array], Array],
    log_bin_mass: Callable[..., Array],
    mean: Array,
    log_scale: Array,
    x: Array,
    num_bins: int,
) -> Array:
    """Shared bin bookkeeping: standardised bin edges, tails at the edge levels."""
    _check_bins(num_bins)
    half_width = 1.0 / (num_bins - 1)
    inv_scale = jnp.exp(-log_scale)
    upper = (x - mean + half_width) * inv_scale
    lower = (x - mean - half_width) * inv_scale
    # The bin width in standard units is computed directly, not as upper - lower, so that
    # it stays exact (and positive) when the scale dwarfs the bin.
    width = 2.0 * half_width * inv_scale
    log_p = log_bin_mass(upper, lower, width, log_scale, half_width)
    # Both distributions are symmetric: log(1 - F(l)) = log F(-l).
    log_p = jnp.where(x < -1.0 + half_width, log_cdf(upper), log_p)
    log_p = jnp.where(x > 1.0 - half_width, log_cdf(-lower), log_p)
    return _sum_non_batch(log_p)


def discretized_logistic_log_prob(
    mean: Array, log_scale: Array, x: Array, num_bins: int = 256
) -> Array:
    """``log P(x) (B,)`` of ``x`` on ``num_bins`` levels of [-1, 1] under a logistic of
    location ``mean`` and scale ``exp(log_scale)`` discretised to those levels.

    Exact in log space everywhere (no clamping of the scale), with finite gradients at the
    edge levels and in the far tails.
    """
    return _discretized(log_sigmoid, _logistic_bin, mean, log_scale, x, num_bins)


def discretized_gaussian_log_prob(
    mean: Array, log_scale: Array, x: Array, num_bins: int = 256
) -> Array:
    """``log P(x) (B,)`` as :func:`discretized_logistic_log_prob` with a Gaussian of mean
    ``mean`` and standard deviation ``exp(log_scale)``.

    Bin masses are differences of log-CDFs taken in the lower tail; bins narrower than the
    standard deviation fall back to a series about the bin's centre (density x width with
    its first two corrections), where the difference would lose float32 precision.
    """
    return _discretized(log_ndtr, _gaussian_bin, mean, log_scale, x, num_bins)


def _split(decoder_output: Array) -> tuple[Array, Array]:
    mean, log_scale = jnp.split(decoder_output, 2, axis=-1)
    return mean, log_scale


def _quantize(y: Array, num_bins: int) -> Array:
    """Nearest of the ``num_bins`` levels on [-1, 1]; beyond the edges, the edge level."""
    _check_bins(num_bins)
    step = 2.0 / (num_bins - 1)
    return jnp.clip(jnp.round((y + 1.0) / step) * step - 1.0, -1.0, 1.0)


class DecoderLikelihood(NamedTuple):
    """A decoder family: decoder outputs per data channel, and ``log_prob(decoder_output
    (B, H, W, C * params_per_channel), x, num_bins) -> (B,)``."""

    params_per_channel: int
    log_prob: Callable[[Array, Array, int], Array]


# name -> (params_per_channel, log_prob). Two-parameter outputs hold the means in the
# first C channels and the log-scales in the last C.
DECODER_LIKELIHOODS: dict[str, DecoderLikelihood] = {
    "bernoulli": DecoderLikelihood(1, lambda out, x, num_bins: bernoulli_log_prob(out, x)),
    "discretized_logistic": DecoderLikelihood(
        2, lambda out, x, num_bins: discretized_logistic_log_prob(*_split(out), x, num_bins)
    ),
    "discretized_gaussian": DecoderLikelihood(
        2, lambda out, x, num_bins: discretized_gaussian_log_prob(*_split(out), x, num_bins)
    ),
}


def _lookup(name: str, decoder_output: Array) -> int:
    if name not in DECODER_LIKELIHOODS:
        raise ValueError(
            f"unknown decoder likelihood {name!r}; known: {sorted(DECODER_LIKELIHOODS)}"
        )
    params = DECODER_LIKELIHOODS[name].params_per_channel
    if decoder_output.shape[-1] % params:
        raise ValueError(
            f"{name!r} needs a multiple of {params} decoder channels, "
            f"got {decoder_output.shape[-1]}"
        )
    return params


# name -> decoder output -> mean image in data space.
_MEANS: dict[str, Callable[[Array], Array]] = {
    "bernoulli": jax.nn.sigmoid,
    "discretized_logistic": lambda out: jnp.clip(_split(out)[0], -1.0, 1.0),
    "discretized_gaussian": lambda out: jnp.clip(_split(out)[0], -1.0, 1.0),
}


def _bernoulli_sample(key: Array, out: Array, num_bins: int) -> Array:
    del num_bins
    return jax.random.bernoulli(key, jax.nn.sigmoid(out)).astype(out.dtype)


def _location_scale_sample(noise: Callable[..., Array]) -> Callable[[Array, Array, int], Array]:
    def sample(key: Array, out: Array, num_bins: int) -> Array:
        mean, log_scale = _split(out)
        # A continuous draw rounded to the nearest level (clipped to the edge levels) falls
        # on each level with exactly its bin's probability, tails included.
        return _quantize(mean + jnp.exp(log_scale) * noise(key, mean.shape, mean.dtype), num_bins)

    return sample


# name -> sample(key, decoder output, num_bins) -> image in data space.
_SAMPLERS: dict[str, Callable[[Array, Array, int], Array]] = {
    "bernoulli": _bernoulli_sample,
    "discretized_logistic": _location_scale_sample(jax.random.logistic),
    "discretized_gaussian": _location_scale_sample(jax.random.normal),
}


def mean_image(name: str, decoder_output: Array) -> Array:
    """The decoder's mean image in data space, for drawing noise-free samples.

    Bernoulli: the probabilities in [0, 1]. Discretised logistic and Gaussian: the location
    clipped to [-1, 1] (not snapped to the levels; near the edges the discretised mean
    differs from it).
    """
    _lookup(name, decoder_output)
    return _MEANS[name](decoder_output)


def sample_image(name: str, key: Array, decoder_output: Array, num_bins: int = 256) -> Array:
    """One draw from the decoder distribution: {0, 1} for Bernoulli (``num_bins`` unused),
    else one of the ``num_bins`` levels on [-1, 1]."""
    _lookup(name, decoder_output)
    return _SAMPLERS[name](key, decoder_output, num_bins)
