"""2-D toy distributions for fast experiments and exact tests.

Each sampler is `(rng: np.random.Generator, n: int) -> (n, 2) float32`, deterministic given
the generator's seed; `SAMPLERS` maps the short name to it. The loader serves them as the
datasets `toy_<name>` (see data/pipeline.py), e.g. `toy_gmm`, `toy_swiss_roll`.

All four live roughly in [-3, 3]^2 with a per-coordinate spread of about 1-1.5, a scale the
usual diffusion SDEs (VP with beta_max=20, VE with sigma_max of a few units) handle as is.

Two have a closed-form density, for likelihood and score tests:
- `gmm_log_prob`: also the density of `scale * X + noise_std * Z` with X ~ gmm and Z ~ N(0, I),
  i.e. the exact marginal p_t of a VP/VE/sub-VP SDE started at the gmm; pass `xp=jax.numpy` to
  get a differentiable (score-ready) version.
- `checkerboard_log_prob`.
"""

from __future__ import annotations

import functools
import math
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np

Sampler = Callable[[np.random.Generator, int], np.ndarray]

GMM_NUM_COMPONENTS = 8
GMM_RADIUS = 2.0
GMM_STD = 0.2

MOONS_NOISE = 0.1
SWISS_ROLL_NOISE = 0.2  # in the final (divided by 5) units


def gmm_means() -> np.ndarray:
    """The (8, 2) component means: equally spaced on a circle of radius GMM_RADIUS."""
    angles = 2.0 * np.pi * np.arange(GMM_NUM_COMPONENTS) / GMM_NUM_COMPONENTS
    return GMM_RADIUS * np.stack([np.cos(angles), np.sin(angles)], axis=-1)


def gmm(rng: np.random.Generator, n: int) -> np.ndarray:
    """Equal-weight mixture of 8 isotropic Gaussians (std GMM_STD) on a circle."""
    component = rng.integers(GMM_NUM_COMPONENTS, size=n)
    points = gmm_means()[component] + GMM_STD * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def gmm_log_prob(
    x: Any, *, scale: float | Any = 1.0, noise_std: float | Any = 0.0, xp: Any = np
) -> Any:
    """Exact log-density (nats) of `scale * X + noise_std * Z`, X ~ gmm, Z ~ N(0, I).

    With the defaults it is the log-density of `gmm` itself. `x` has shape (..., 2); the
    result has shape (...). `xp` is the array namespace (numpy, or jax.numpy to take
    gradients: the score is `jax.grad` of the sum).
    """
    x = xp.asarray(x)
    means = xp.asarray(gmm_means(), dtype=x.dtype) * scale
    var = (scale * GMM_STD) ** 2 + noise_std**2
    sq_dist = xp.sum((x[..., None, :] - means) ** 2, axis=-1)  # (..., K)
    log_components = -0.5 * sq_dist / var - xp.log(2.0 * np.pi * var)
    # log-sum-exp by hand: keeps the function namespace-agnostic (numpy has no logsumexp).
    peak = xp.max(log_components, axis=-1, keepdims=True)
    log_sum = xp.log(xp.sum(xp.exp(log_components - peak), axis=-1)) + peak[..., 0]
    return log_sum - math.log(GMM_NUM_COMPONENTS)


def moons(rng: np.random.Generator, n: int) -> np.ndarray:
    """Two interleaved half circles (as sklearn's make_moons), centred and scaled by 1.5."""
    upper = rng.random(n) < 0.5
    theta = np.pi * rng.random(n)
    x = np.where(upper, np.cos(theta), 1.0 - np.cos(theta))
    y = np.where(upper, np.sin(theta), 0.5 - np.sin(theta))
    points = np.stack([x - 0.5, y - 0.25], axis=-1) + MOONS_NOISE * rng.standard_normal((n, 2))
    return (1.5 * points).astype(np.float32)


def swiss_roll(rng: np.random.Generator, n: int) -> np.ndarray:
    """The 2-D swiss roll: (t cos t, t sin t) / 5 for t in [1.5 pi, 4.5 pi], plus noise."""
    t = 1.5 * np.pi * (1.0 + 2.0 * rng.random(n))
    points = np.stack([t * np.cos(t), t * np.sin(t)], axis=-1) / 5.0
    points += SWISS_ROLL_NOISE * rng.standard_normal((n, 2))
    return points.astype(np.float32)


def checkerboard(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniform on the 8 'black' unit squares of a 4x4 board covering [-2, 2]^2."""
    x = 4.0 * rng.random(n) - 2.0
    # Column floor(x) picks which two of its four rows are black; the rows alternate.
    y = rng.random(n) - 2.0 * rng.integers(2, size=n) + np.mod(np.floor(x), 2.0)
    return np.stack([x, y], axis=-1).astype(np.float32)


def checkerboard_log_prob(x: np.ndarray) -> np.ndarray:
    """Exact log-density of `checkerboard`: log(1/8) on black squares, -inf elsewhere."""
    x = np.asarray(x, dtype=np.float64)
    inside = np.all((x >= -2.0) & (x < 2.0), axis=-1)
    black = np.mod(np.floor(x[..., 0]) + np.floor(x[..., 1]), 2.0) == 0.0
    return np.where(inside & black, -math.log(8.0), -np.inf)


SAMPLERS: dict[str, Sampler] = {
    "gmm": gmm,
    "moons": moons,
    "swiss_roll": swiss_roll,
    "checkerboard": checkerboard,
}

LOG_PROBS: dict[str, Callable[..., Any]] = {
    "gmm": gmm_log_prob,
    "checkerboard": checkerboard_log_prob,
}

# Fixed data seeds: the dataset is the same in every run; the training seed only decides
# the order it is visited in.
SPLIT_SEEDS = {"train": 0, "test": 1}


@functools.cache
def load(name: str, split: str, num_samples: int) -> np.ndarray:
    """The (num_samples, 2) float32 points of toy dataset `name`'s `split` (read-only).

    Deterministic: seeded by the dataset name and split, never by the training seed.
    """
    if name not in SAMPLERS:
        raise ValueError(f"unknown toy dataset {name!r}; known: {sorted(SAMPLERS)}")
    if split not in SPLIT_SEEDS:
        raise ValueError(f"toy dataset {name!r} has splits {sorted(SPLIT_SEEDS)}, not {split!r}")
    if num_samples < 1:
        raise ValueError(f"toy dataset {name!r} needs num_samples >= 1, got {num_samples}")
    rng = np.random.default_rng([SPLIT_SEEDS[split], zlib.crc32(name.encode())])
    points = SAMPLERS[name](rng, num_samples)
    points.setflags(write=False)  # cached and shared: callers must not modify it
    return points
