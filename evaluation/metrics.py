"""Sample-quality metrics on feature arrays, in numpy float64.

Everything here is a pure function of (features, logits) arrays produced by a feature
network (see `evaluation.extractor`); nothing needs jax. Bad inputs raise `ValueError`s with a
single line, because the CLI shows them to users as they are.
"""

from __future__ import annotations

import numpy as np
from scipy.special import log_softmax, logsumexp

__all__ = [
    "class_histogram",
    "classifier_score",
    "conditional_accuracy",
    "fd_from_features",
    "feature_statistics",
    "frechet_distance",
    "kernel_inception_distance",
    "nearest_neighbour_radii",
    "normalized_entropy",
    "precision_recall",
]

_EPS = np.finfo(np.float64).eps
# Covariances whose most negative eigenvalue exceeds this fraction of the largest are
# rejected as not positive semi-definite. Statistics computed and stored in float32 sit
# around 1e-8 here, so the margin is ~100x; a genuinely indefinite matrix is far beyond.
_PSD_RTOL = 1e-6
# The smallest sample sets the metrics accept, which evaluation.protocol checks before it
# draws any samples: KID's unbiased within-set averages need two points per subset, and
# precision/recall's radii need k other points in each set.
KID_MIN_SUBSET_SIZE = 2
PR_NEIGHBOURS = 3


def _features(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a non-empty, finite (N, D) array (dtype unchanged, so no large copy here)."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D (samples, features) array, got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{name}: empty feature array {x.shape}")
    if not np.issubdtype(x.dtype, np.number) or not np.isfinite(x).all():
        raise ValueError(f"{name}: features must be finite numbers")
    return x


def _same_dim(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dimensions differ: {a.shape[1]} vs {b.shape[1]}")


# ---------------------------------------------------------------------- Fréchet distance


def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and unbiased covariance (D, D) of (N, D) features, in float64."""
    x = _features(features, "features").astype(np.float64)
    n, d = x.shape
    # With n <= d the sample covariance is singular by construction; the distance would
    # then mostly measure the sample count, not the samples, so refuse it here.
    if n <= d:
        raise ValueError(
            "Fréchet distance needs more samples than feature dimensions: "
            f"got {n} samples of {d}-dimensional features"
        )
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_root_factor(cov: np.ndarray, name: str) -> tuple[np.ndarray, float]:
    """F = V sqrt(W) (zero columns dropped) with F F' = cov, and the trace of F F'.

    V F' is the symmetric square root of `cov`. Negative eigenvalues (round-off) are
    clipped to 0, and so are positive ones below d * eps * max: their computed values are
    noise of that size, which a square root would amplify to sqrt(eps) relative. The trace
    is that of the same clipped matrix, so that every term of the distance refers to one
    PSD matrix and the result is >= 0 up to round-off.
    """
    w, v = np.linalg.eigh((cov + cov.T) / 2)
    top = max(float(w[-1]), 0.0)
    if w[0] < -_PSD_RTOL * top or (top == 0.0 and w[0] < 0.0):
        raise ValueError(
            f"{name} is not positive semi-definite: eigenvalue {w[0]:.3g} (largest {top:.3g})"
        )
    keep = w > len(w) * _EPS * top
    return v[:, keep] * np.sqrt(w[keep]), float(w[keep].sum())


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2).

    ||mu1 - mu2||^2 + tr(C1) + tr(C2) - 2 tr((C1 C2)^{1/2}), in float64. The trace term
    is the sum of the singular values of C1^{1/2} C2^{1/2} (equivalently, of the square
    roots of the eigenvalues of the symmetric PSD matrix C1^{1/2} C2 C1^{1/2}), with the
    square roots from symmetric eigendecompositions; this stays real and accurate for
    singular covariances, where scipy.linalg.sqrtm of the non-symmetric C1 C2 returns
    complex garbage.
    """
    mu1, mu2 = (np.asarray(m, np.float64) for m in (mu1, mu2))
    cov1, cov2 = (np.asarray(c, np.float64) for c in (cov1, cov2))
    if mu1.ndim != 1 or mu1.shape != mu2.shape or mu1.size == 0:
        raise ValueError(f"means must be non-empty 1-D of equal length: {mu1.shape}, {mu2.shape}")
    d = mu1.shape[0]
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if c.shape != (d, d):
            raise ValueError(f"{name}: expected shape {(d, d)} to match the means, got {c.shape}")
    for name, x in (("mu1", mu1), ("mu2", mu2), ("cov1", cov1), ("cov2", cov2)):
        if not np.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or infinity")
    for name, c in (("cov1", cov1), ("cov2", cov2)):
        if np.abs(c - c.T).max() > 1e-6 * np.abs(c).max():
            raise ValueError(f"{name} is not symmetric")

    f1, trace1 = _psd_root_factor(cov1, "cov1")
    f2, trace2 = _psd_root_factor(cov2, "cov2")
    # tr((C1 C2)^1/2) is the sum of the singular values of C1^1/2 C2^1/2 = V1 F1' F2 V2',
    # i.e. of F1' F2 (at most rank1 x rank2). These are exactly sqrt(eig(S1 C2 S1)) with
    # S1 = C1^1/2, but an SVD keeps small ones accurate to eps * ||F1' F2|| instead of
    # sqrt(eps): via eigenvalues, close distributions with ill-conditioned covariances
    # (typical of network features) get errors ~1e-7 of the trace, as large as the distance.
    trace_sqrt = (
        float(np.linalg.svd(f1.T @ f2, compute_uv=False).sum()) if f1.size and f2.size else 0.0
    )

    diff = mu1 - mu2
    mean_term = float(diff @ diff)
    fd = mean_term + trace1 + trace2 - 2.0 * trace_sqrt
    # Mathematically fd >= ||mu1 - mu2||^2 >= 0. Clip only what round-off can explain
    # (sqrt is not Lipschitz at 0, hence sqrt(eps)); anything more negative is a bug and
    # must not be reported as a distance of 0.
    if fd < 0.0:
        if fd < -np.sqrt(_EPS) * (mean_term + trace1 + trace2):
            raise FloatingPointError(f"Fréchet distance came out negative: {fd:.6g}")
        fd = 0.0
    return fd


def fd_from_features(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to two (N, D) feature arrays."""
    a, b = _features(a, "features a"), _features(b, "features b")
    _same_dim(a, b)
    return frechet_distance(*feature_statistics(a), *feature_statistics(b))


# ------------------------------------------------------------ kernel inception distance


def kernel_inception_distance(
    a: np.ndarray,
    b: np.ndarray,
    *,
    num_subsets: int = 100,
    subset_size: int = 1000,
    seed: int = 0,
) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018): mean and std of unbiased MMD^2 estimates over subsets.

    Kernel k(x, y) = (x.y / d + 1)^3. Each subset draws `subset_size` rows of `a` and of
    `b` without replacement (independently across subsets) from
    `np.random.default_rng(seed)`; `subset_size` is capped at min(len(a), len(b)). The
    std is the population std over subsets (ddof=0), as in the reference implementations.
    The estimate is unbiased for independent samples; a set compared with itself comes out
    slightly negative, because subsets then share points.
    """
    a, b = _features(a, "features a"), _features(b, "features b")
    _same_dim(a, b)
    if num_subsets < 1:
        raise ValueError(f"KID needs num_subsets >= 1, got {num_subsets}")
    m = min(subset_size, len(a), len(b))
    if m < KID_MIN_SUBSET_SIZE:
        raise ValueError(
            f"KID needs subsets of at least {KID_MIN_SUBSET_SIZE} samples per set, got {m}"
        )
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    off_diagonal = m * (m - 1)

    def kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        k = x @ y.T
        k /= d
        k += 1.0
        return k * k * k  # twice as fast as k ** 3, which numpy computes with pow

    mmds = np.empty(num_subsets)
    for i in range(num_subsets):
        x = a[rng.choice(len(a), m, replace=False)].astype(np.float64)
        y = b[rng.choice(len(b), m, replace=False)].astype(np.float64)
        k_xx, k_yy = kernel(x, x), kernel(y, y)
        # Unbiased: k(x_i, x_i) terms are excluded from the within-set averages.
        mmds[i] = (
            (k_xx.sum() - np.trace(k_xx)) / off_diagonal
            + (k_yy.sum() - np.trace(k_yy)) / off_diagonal
            - 2.0 * kernel(x, y).mean()
        )
    return float(mmds.mean()), float(mmds.std())


# ----------------------------------------------------------------- precision and recall


def _squared_distances(x: np.ndarray, y: np.ndarray, x2: np.ndarray, y2: np.ndarray) -> np.ndarray:
    # ||x||^2 + ||y||^2 - 2 x.y can dip below 0 by round-off for (near-)equal points.
    return np.maximum(x2[:, None] + y2[None, :] - 2.0 * (x @ y.T), 0.0)


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(s, min(s + size, n)) for s in range(0, n, size)]


def nearest_neighbour_radii(
    features: np.ndarray, k: int = 3, *, batch_size: int = 2048
) -> np.ndarray:
    """Distance from each row to its k-th nearest neighbour among the *other* rows.

    Computed tile by tile (batch_size x batch_size distances at a time) with a running
    k-smallest per row, so 50k x 50k needs no O(N^2) memory.
    """
    return np.sqrt(_knn_radii2(_features(features, "features"), k, batch_size))


def _knn_radii2(x: np.ndarray, k: int, batch_size: int) -> np.ndarray:
    # Squared radii: precision/recall compare squared distances with these directly, so
    # that points exactly on a sphere stay inside (no sqrt-then-square round trip).
    n = len(x)
    if not 1 <= k < n:
        raise ValueError(f"k-th nearest neighbour needs 1 <= k < number of samples ({n}), got {k}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    norms = np.einsum("ij,ij->i", x, x, dtype=np.float64)
    blocks = _blocks(n, batch_size)
    radii2 = np.empty(n)
    for rows in blocks:
        xr = x[rows].astype(np.float64)
        best = np.full((len(xr), k), np.inf)
        for cols in blocks:
            dist = _squared_distances(xr, x[cols].astype(np.float64), norms[rows], norms[cols])
            if rows == cols:
                np.fill_diagonal(dist, np.inf)  # a point is not its own neighbour
            both = np.concatenate([best, dist], axis=1)
            best = np.partition(both, k - 1, axis=1)[:, :k]
        radii2[rows] = best.max(axis=1)
    return radii2


def precision_recall(
    real: np.ndarray, fake: np.ndarray, *, k: int = PR_NEIGHBOURS, batch_size: int = 2048
) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019).

    Each real point spans a hypersphere out to its k-th nearest real neighbour; precision
    is the fraction of fake points inside at least one (distance <= radius). Recall is the
    same with the roles swapped. Distances are formed in float64 tiles of
    batch_size x batch_size; one pass over fake-real tiles serves both directions.
    """
    real, fake = _features(real, "real features"), _features(fake, "fake features")
    _same_dim(real, fake)
    real_r2 = _knn_radii2(real, k, batch_size)
    fake_r2 = _knn_radii2(fake, k, batch_size)
    real_n2 = np.einsum("ij,ij->i", real, real, dtype=np.float64)
    fake_n2 = np.einsum("ij,ij->i", fake, fake, dtype=np.float64)
    fake_in_real = np.zeros(len(fake), bool)
    real_in_fake = np.zeros(len(real), bool)
    for fr in _blocks(len(fake), batch_size):
        f = fake[fr].astype(np.float64)
        for rr in _blocks(len(real), batch_size):
            dist = _squared_distances(f, real[rr].astype(np.float64), fake_n2[fr], real_n2[rr])
            fake_in_real[fr] |= (dist <= real_r2[None, rr]).any(axis=1)
            real_in_fake[rr] |= (dist <= fake_r2[fr, None]).any(axis=0)
    return float(fake_in_real.mean()), float(real_in_fake.mean())


# ------------------------------------------------------------------ classifier metrics


def _logits(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    if z.ndim != 2 or z.shape[0] == 0 or z.shape[1] == 0:
        raise ValueError(f"logits: expected a non-empty (samples, classes) array, got {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("logits contain NaN or infinity")
    return z


def classifier_score(logits: np.ndarray) -> float:
    """Inception-score analogue exp(mean_i KL(p(y|x_i) || p(y))), in [1, num_classes].

    p(y|x) = softmax(logits) via a stable log-softmax; p(y) is the mean of p(y|x_i).
    """
    log_p = log_softmax(_logits(logits), axis=1)
    # log p(y) from the log-probabilities, so that it stays finite where every p(y|x_i)
    # underflows; terms with p(y|x_i) = 0 then contribute exactly 0 (0 log 0 = 0).
    log_marginal = logsumexp(log_p, axis=0) - np.log(len(log_p))
    kl = (np.exp(log_p) * (log_p - log_marginal)).sum(axis=1)
    # The mean KL is a mutual information, >= 0; clip round-off so that the score >= 1.
    return float(np.exp(max(kl.mean(), 0.0)))


def class_histogram(logits_or_predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts per class (int64, length num_classes) of argmax(logits) or integer labels."""
    x = np.asarray(logits_or_predictions)
    if num_classes < 1:
        raise ValueError(f"num_classes must be positive, got {num_classes}")
    if x.ndim == 2:
        if x.shape[1] != num_classes:
            raise ValueError(f"logits have {x.shape[1]} classes, expected {num_classes}")
        labels = _logits(x).argmax(axis=1)
    elif x.ndim == 1:
        if x.size and not np.issubdtype(x.dtype, np.integer):
            raise ValueError(f"predictions must be integer labels, got {x.dtype}")
        labels = x.astype(np.int64)
    else:
        raise ValueError(f"expected (N, classes) logits or (N,) labels, got shape {x.shape}")
    if labels.size == 0:
        raise ValueError("class histogram of an empty set")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got [{labels.min()}, {labels.max()}]"
        )
    return np.bincount(labels, minlength=num_classes).astype(np.int64)


def normalized_entropy(counts: np.ndarray) -> float:
    """Entropy of a class histogram divided by log(num_classes): 1 = even, 0 = one class."""
    c = np.asarray(counts, np.float64)
    if c.ndim != 1 or len(c) < 2:
        raise ValueError(f"normalized entropy needs a histogram of >= 2 classes, got {c.shape}")
    if not np.isfinite(c).all() or (c < 0).any() or c.sum() == 0:
        raise ValueError("counts must be finite, non-negative and not all zero")
    p = c / c.sum()
    nonzero = p[p > 0]  # empty classes contribute 0 (0 log 0 = 0)
    entropy = float(-(nonzero * np.log(nonzero)).sum())
    return min(max(entropy / np.log(len(c)), 0.0), 1.0)  # round-off only


def conditional_accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose argmax class equals the label they were generated for."""
    z = _logits(logits)
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != len(z):
        raise ValueError(f"labels shape {y.shape} does not match {len(z)} logits")
    if not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"labels must be integers, got {y.dtype}")
    return float((z.argmax(axis=1) == y).mean())
