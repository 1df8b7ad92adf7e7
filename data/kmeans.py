"""Clusters of a dataset, for self-conditioning (Liu et al., 2020, "Diverse image
generation via self-conditioned GANs"): a model conditioned on the cluster of each image in
place of a human label, which samples the cluster from the training split's frequencies.

`kmeans` clusters the training split once (deterministic: k-means++ seeding from a fixed
seed, then Lloyd's iterations to convergence); `nearest_centre` labels images by their
nearest centre; `draw_clusters` draws labels for samples. Neutral ground: the GAN and the
diffusion families both use it. Fixed pixel clusters suit small images like the digits,
whose pixel clusters already follow the digit classes closely.

Stratified draws (an option; i.i.d. is the default): each sample's cluster has exactly the
training frequencies as its distribution, but any run of n consecutive samples holds
cluster k within a few samples of n times its frequency, as the stratified test split holds
each class. Independent draws ('iid') add multinomial noise to the cluster counts (about
sqrt(n) samples a cluster), and at a few hundred samples that noise, not the images, is
most of FD (docs/families.md). Headline figures use 'iid' draws.
"""

import jax
import jax.numpy as jnp
import numpy as np


def kmeans(points: np.ndarray, k: int, *, seed: int = 0,
           max_iters: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """(centres (k, D) float32, assignment (N,) int32) of `points` (N, D) by k-means++
    seeding and Lloyd's iterations in float64, until no assignment changes.

    A cluster that empties is re-seeded with the point farthest from its centre, so every
    one of the k clusters holds at least one point. ValueError if k is not in 1..N.
    """
    points = np.asarray(points, np.float64).reshape(len(points), -1)
    n = len(points)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= the number of points ({n}), got k={k}")
    rng = np.random.default_rng(seed)
    centres = [points[rng.integers(n)]]
    closest = _squared_distances(points, np.stack(centres)).min(axis=1)
    for _ in range(1, k):
        total = closest.sum()
        # All points on the centres already: any point will do (duplicates in the data).
        index = rng.choice(n, p=closest / total) if total > 0 else rng.integers(n)
        centres.append(points[index])
        closest = np.minimum(closest, _squared_distances(points, points[index][None])[:, 0])
    centres = np.stack(centres)
    assignment = np.full(n, -1)
    for _ in range(max_iters):
        distances = _squared_distances(points, centres)
        new = distances.argmin(axis=1)
        for empty in np.setdiff1d(np.arange(k), new):
            farthest = distances[np.arange(n), new].argmax()
            new[farthest] = empty
            distances[farthest] = 0.0
        if np.array_equal(new, assignment):
            break
        assignment = new
        centres = np.stack([points[assignment == j].mean(axis=0) for j in range(k)])
    return centres.astype(np.float32), assignment.astype(np.int32)


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    # |p|^2 - 2 p.c + |c|^2: (N, K) memory, not (N, K, D).
    squared = ((points**2).sum(axis=1)[:, None] - 2.0 * points @ centres.T
               + (centres**2).sum(axis=1)[None, :])
    return np.maximum(squared, 0.0)


def nearest_centre(images: jax.Array, centres: jax.Array) -> jax.Array:
    """(B,) int32 index of the nearest of `centres` (K, D) to each of `images` (B, ...)."""
    flat = images.reshape(images.shape[0], -1)
    distances = (jnp.sum(flat**2, axis=1, keepdims=True) - 2.0 * flat @ centres.T
                 + jnp.sum(centres**2, axis=1)[None, :])
    return jnp.argmin(distances, axis=1).astype(jnp.int32)


CLUSTER_DRAWS = ("stratified", "iid")

# 2^32 / golden ratio, odd: i * _WEYL_STEP mod 2^32 is the golden-ratio rotation sequence
# in exact integer arithmetic (a float32 i * 0.618... loses the fraction past i ~ 1e4).
_WEYL_STEP = 2654435769


def draw_clusters(key: jax.Array, frequencies: jax.Array, num: int, *,
                  how: str) -> jax.Array:
    """(num,) int32 cluster labels whose distribution is `frequencies` (K,).

    'iid': independent categorical draws. 'stratified': the inverse CDF of the
    golden-ratio sequence u_i = frac(u_0 + i / phi) with a uniform random u_0, so each u_i
    is uniform (each label has the exact distribution) while any n consecutive u_i fall
    into an interval of length p about n p times, give or take O(log n) (the sequence's
    low discrepancy). ValueError for another `how`.
    """
    if how == "iid":
        return jax.random.categorical(key, jnp.log(frequencies), shape=(num,)).astype(jnp.int32)
    if how != "stratified":
        raise ValueError(f"cluster draws are one of {CLUSTER_DRAWS}, got {how!r}")
    offset = jax.random.bits(key, (), jnp.uint32)
    steps = jnp.arange(num, dtype=jnp.uint32) * jnp.uint32(_WEYL_STEP)
    u = (offset + steps).astype(jnp.float32) / jnp.float32(2.0**32)  # uint32 wraps: mod 1
    cumulative = jnp.cumsum(frequencies)
    labels = jnp.searchsorted(cumulative / cumulative[-1], u, side="right")
    return jnp.minimum(labels, frequencies.shape[0] - 1).astype(jnp.int32)
