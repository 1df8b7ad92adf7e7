"""Sample-quality metrics, checked against closed forms and hand-made cases."""

import numpy as np
import pytest
from scipy import linalg

from evaluation import metrics


def _random_rotation(rng, d):
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def _random_cov(rng, d, cond=10.0):
    """A well-conditioned full-rank covariance with eigenvalues in [1, cond]."""
    q = _random_rotation(rng, d)
    return (q * rng.uniform(1.0, cond, d)) @ q.T


def _low_rank_cov(rng, d, r):
    a = rng.normal(size=(d, r))
    return a @ a.T, a


# ------------------------------------------------------------------- Fréchet distance


def test_fd_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 4.0, d), rng.uniform(0.1, 4.0, d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert isinstance(got, float)
    assert got == pytest.approx(expected, rel=1e-10)


def test_fd_commuting_full_covariances_closed_form():
    # Same eigenvectors, different eigenvalues: the diagonal case in a rotated basis.
    rng = np.random.default_rng(1)
    d = 12
    q = _random_rotation(rng, d)
    s1, s2 = rng.uniform(0.5, 3.0, d), rng.uniform(0.5, 3.0, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(mu1, (q * s1) @ q.T, mu2, (q * s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fd_non_commuting_matches_sqrtm_reference():
    rng = np.random.default_rng(2)
    d = 16
    c1, c2 = _random_cov(rng, d), _random_cov(rng, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    # Independent reference, valid because both matrices are well conditioned.
    trace_sqrt = np.trace(linalg.sqrtm(c1 @ c2)).real
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * trace_sqrt
    got = metrics.frechet_distance(mu1, c1, mu2, c2)
    assert got == pytest.approx(expected, rel=1e-8)


def test_fd_identical_is_zero_and_symmetric():
    rng = np.random.default_rng(3)
    d = 32
    mu, c = rng.normal(size=d), _random_cov(rng, d, cond=1e4)
    assert abs(metrics.frechet_distance(mu, c, mu, c)) < 1e-10 * np.trace(c)
    mu2, c2 = rng.normal(size=d), _random_cov(rng, d)
    assert metrics.frechet_distance(mu, c, mu2, c2) == pytest.approx(
        metrics.frechet_distance(mu2, c2, mu, c), rel=1e-10
    )


def test_fd_rank_deficient():
    rng = np.random.default_rng(4)
    d, r = 10, 3
    c1, a1 = _low_rank_cov(rng, d, r)
    c2, a2 = _low_rank_cov(rng, d, r)
    mu = np.zeros(d)
    # Identical singular covariances: exactly 0 up to round-off, not sqrt(eps) noise.
    assert abs(metrics.frechet_distance(mu, c1, mu, c1)) < 1e-10 * np.trace(c1)
    # Non-commuting rank-3 pair: the non-zero eigenvalues of A1 A1' A2 A2' are those of
    # (A1' A2)(A1' A2)', so tr((C1 C2)^1/2) is the nuclear norm of the 3x3 matrix A1' A2.
    nuclear = np.linalg.svd(a1.T @ a2, compute_uv=False).sum()
    expected = np.trace(c1) + np.trace(c2) - 2 * nuclear
    got = metrics.frechet_distance(mu, c1, mu, c2)
    assert np.isfinite(got)
    assert got == pytest.approx(expected, rel=1e-8)
    assert got == pytest.approx(metrics.frechet_distance(mu, c2, mu, c1), rel=1e-10)


def test_fd_rank_deficient_disjoint_and_commuting_supports():
    d = 10
    s1, s2 = np.zeros(d), np.zeros(d)
    s1[:3], s2[3:6] = [1.0, 2.0, 3.0], [4.0, 5.0, 6.0]
    q = _random_rotation(np.random.default_rng(5), d)
    c1, c2 = (q * s1) @ q.T, (q * s2) @ q.T
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    # Orthogonal supports: C1 C2 = 0, so the cross term vanishes.
    assert metrics.frechet_distance(mu1, c1, mu2, c2) == pytest.approx(
        d * 0.25 + 6.0 + 15.0, rel=1e-10
    )
    # Overlapping rank-3 supports in a rotated basis.
    s3 = np.zeros(d)
    s3[1:4] = [9.0, 0.25, 16.0]
    expected = np.sum((np.sqrt(s1) - np.sqrt(s3)) ** 2)
    got = metrics.frechet_distance(mu1, c1, mu1, (q * s3) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_fd_zero_covariance():
    # Constant features: both covariances are 0 and only the means differ.
    a, b = np.ones((10, 3)), np.full((10, 3), 3.0)
    assert metrics.fd_from_features(a, b) == pytest.approx(12.0, rel=1e-12)
    assert metrics.fd_from_features(a, a) == 0.0


def test_fd_close_ill_conditioned_covariances_are_accurate():
    # Spectrum over 12 decades and a distance ~1e-7 of the traces: the small-eigenvalue
    # round-off must not swamp the distance (the eigenvalue-of-S1 C2 S1 route fails here).
    rng = np.random.default_rng(6)
    d = 64
    q = _random_rotation(rng, d)
    s1 = np.logspace(0, -12, d)
    s2 = s1 * (1 + 1e-3 * rng.normal(size=d))
    expected = np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    got = metrics.frechet_distance(np.zeros(d), (q * s1) @ q.T, np.zeros(d), (q * s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-4)


def test_fd_from_samples_converges():
    rng = np.random.default_rng(7)
    d = 4
    mu1, mu2 = np.zeros(d), np.full(d, 0.5)
    c1, c2 = _random_cov(rng, d, cond=3.0), _random_cov(rng, d, cond=3.0)
    true = metrics.frechet_distance(mu1, c1, mu2, c2)
    errors = []
    for n in (100, 100_000):
        a = rng.multivariate_normal(mu1, c1, size=n)
        b = rng.multivariate_normal(mu2, c2, size=n)
        errors.append(abs(metrics.fd_from_features(a, b) - true))
    assert errors[1] < errors[0]
    assert errors[1] < 0.02 * true


def test_feature_statistics():
    rng = np.random.default_rng(8)
    x = rng.normal(size=(200, 5)).astype(np.float32)
    mu, cov = metrics.feature_statistics(x)
    assert mu.dtype == cov.dtype == np.float64
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(cov, np.cov(x.astype(np.float64).T, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("n", [50, 64])
def test_feature_statistics_needs_more_samples_than_dims(n):
    x = np.random.default_rng(9).normal(size=(n, 64))
    message = (
        "Fréchet distance needs more samples than feature dimensions: "
        f"got {n} samples of 64-dimensional features"
    )
    with pytest.raises(ValueError) as info:
        metrics.feature_statistics(x)
    assert str(info.value) == message
    with pytest.raises(ValueError, match="more samples than feature dimensions"):
        metrics.fd_from_features(x, x)


def test_fd_input_errors():
    mu, c = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match="shape"):
        metrics.frechet_distance(mu, c, mu, np.eye(4))
    with pytest.raises(ValueError, match="equal length"):
        metrics.frechet_distance(mu, c, np.zeros(4), c)
    with pytest.raises(ValueError, match="positive semi-definite"):
        metrics.frechet_distance(mu, c, mu, np.diag([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="symmetric"):
        metrics.frechet_distance(mu, c, mu, np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="NaN"):
        metrics.frechet_distance(mu, np.full((3, 3), np.nan), mu, c)
    x = np.random.default_rng(10).normal(size=(20, 3))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.fd_from_features(x, x[:, :2])
    with pytest.raises(ValueError, match="empty"):
        metrics.fd_from_features(x[:0], x)


# --------------------------------------------------------- kernel inception distance


def test_kid_identical_near_zero_different_positive_and_reproducible():
    rng = np.random.default_rng(11)
    d = 16
    a = rng.normal(size=(600, d))
    same = rng.normal(size=(600, d))
    shifted = rng.normal(loc=1.0, size=(600, d))
    kwargs = dict(num_subsets=20, subset_size=200)
    diff_mean, diff_std = metrics.kernel_inception_distance(a, shifted, **kwargs)
    assert diff_mean > 1.0 and diff_mean > 10 * diff_std
    # The same set twice: subsets share points, whose k(x, x) enter the cross term only,
    # so the estimate is slightly negative, but tiny on the scale of a real difference.
    identical_mean, _ = metrics.kernel_inception_distance(a, a, **kwargs)
    assert abs(identical_mean) < 1e-2 * diff_mean
    # Independent samples of one distribution: unbiased, so ~0 within its spread.
    same_mean, same_std = metrics.kernel_inception_distance(a, same, **kwargs)
    assert abs(same_mean) < 1e-2 * diff_mean and abs(same_mean) < 2 * same_std
    assert metrics.kernel_inception_distance(a, shifted, **kwargs) == (diff_mean, diff_std)
    assert metrics.kernel_inception_distance(a, shifted, **kwargs, seed=1) != (diff_mean, diff_std)


def test_kid_matches_direct_formula_and_caps_subset_size():
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.3
    # subset_size > len(b) is capped at 5; check the single-subset value by hand.
    got, std = metrics.kernel_inception_distance(a, b, num_subsets=1, subset_size=100, seed=3)
    draw = np.random.default_rng(3)
    x, y = a[draw.choice(7, 5, replace=False)], b[draw.choice(5, 5, replace=False)]

    def k(u, v):
        return (u @ v / 3 + 1) ** 3

    m = 5
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    assert got == pytest.approx(xx + yy - 2 * xy, rel=1e-12)
    assert std == 0.0


def test_kid_errors():
    x = np.zeros((10, 4))
    with pytest.raises(ValueError, match="feature dimensions differ"):
        metrics.kernel_inception_distance(x, np.zeros((10, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.kernel_inception_distance(x, x[:1])
    with pytest.raises(ValueError, match="empty"):
        metrics.kernel_inception_distance(x[:0], x)


# --------------------------------------------------------------- precision and recall


def test_precision_recall_identical_and_separated():
    rng = np.random.default_rng(13)
    real = rng.normal(size=(300, 8))
    assert metrics.precision_recall(real, real.copy(), batch_size=64) == (1.0, 1.0)
    assert metrics.precision_recall(real, real + 100.0, batch_size=64) == (0.0, 0.0)


def test_precision_recall_half_the_modes():
    # Four far-apart modes; the fake set covers two of them only.
    rng = np.random.default_rng(14)
    centers = 100.0 * np.eye(4, 6)
    real = np.concatenate([c + rng.normal(size=(100, 6)) for c in centers])
    # Exact copies of the real points of two modes: the answer is exactly (1, 1/2).
    assert metrics.precision_recall(real, real[:200], batch_size=64) == (1.0, 0.5)
    # Fresh samples: dropping two of four modes leaves precision as it is and halves
    # recall; recall cannot exceed 1/2 since the missing modes are beyond every fake radius.
    half = np.concatenate([c + rng.normal(size=(150, 6)) for c in centers[:2]])
    full = np.concatenate([c + rng.normal(size=(150, 6)) for c in centers])
    precision_half, recall_half = metrics.precision_recall(real, half, k=3, batch_size=128)
    precision_full, recall_full = metrics.precision_recall(real, full, k=3, batch_size=128)
    assert precision_full > 0.8 and recall_full > 0.8
    assert precision_half == pytest.approx(precision_full, abs=0.05)
    assert recall_half == pytest.approx(recall_full / 2, abs=0.05)
    assert recall_half <= 0.5
    # Tiling does not change the answer.
    assert metrics.precision_recall(real, half, k=3, batch_size=17) == (
        precision_half,
        recall_half,
    )


def test_nearest_neighbour_radii_exclude_self():
    # Points 0, 1, 3, 7 on a line: nearest *other* point at 1, 1, 2, 4; second at 3, 2, 3, 6.
    x = np.array([[0.0], [1.0], [3.0], [7.0]])
    for bs in (1, 3, 2048):
        np.testing.assert_array_equal(
            metrics.nearest_neighbour_radii(x, 1, batch_size=bs), [1, 1, 2, 4]
        )
        np.testing.assert_array_equal(
            metrics.nearest_neighbour_radii(x, 2, batch_size=bs), [3, 2, 3, 6]
        )
    with pytest.raises(ValueError, match="k-th nearest"):
        metrics.nearest_neighbour_radii(x, 4)


def test_precision_recall_hand_made_k1():
    # Real radii (k=1) are [1, 1, 2, 4] as above: balls [-1, 1], [0, 2], [1, 5], [3, 11].
    real = np.array([[0.0], [1.0], [3.0], [7.0]])
    # Fake at -1 (boundary, inside), 11 (boundary, inside), 12 and -2 (outside).
    fake = np.array([[-1.0], [11.0], [12.0], [-2.0]])
    precision, recall = metrics.precision_recall(real, fake, k=1, batch_size=3)
    assert precision == 0.5
    # Fake radii (k=1) are all 1, balls [-2, 0], [10, 12], [11, 13], [-3, -1]: only the
    # real point 0 is covered.
    assert recall == 0.25


# ----------------------------------------------------------------- classifier metrics


def test_classifier_score():
    k = 10
    assert metrics.classifier_score(np.zeros((50, k))) == pytest.approx(1.0, abs=1e-12)
    confident = 1e3 * np.eye(k)[np.arange(200) % k]  # one-hot, even over the classes
    assert metrics.classifier_score(confident) == pytest.approx(k, rel=1e-12)
    same_class = 1e3 * np.eye(k)[np.zeros(200, int)]
    assert metrics.classifier_score(same_class) == pytest.approx(1.0, abs=1e-12)
    logits = np.random.default_rng(15).normal(scale=3.0, size=(100, k))
    assert 1.0 <= metrics.classifier_score(logits) <= k
    # Shifting logits per row does not change softmax (stability against large values).
    assert metrics.classifier_score(logits + 1e4) == pytest.approx(
        metrics.classifier_score(logits), rel=1e-9
    )
    with pytest.raises(ValueError, match="logits"):
        metrics.classifier_score(np.zeros((0, k)))


def test_class_histogram_and_entropy():
    labels = np.array([0, 1, 1, 3, 3, 3])
    np.testing.assert_array_equal(metrics.class_histogram(labels, 4), [1, 2, 0, 3])
    logits = np.eye(4)[labels] * 5.0
    hist = metrics.class_histogram(logits, 4)
    assert hist.dtype == np.int64
    np.testing.assert_array_equal(hist, [1, 2, 0, 3])
    assert metrics.normalized_entropy(np.array([5, 5, 5, 5])) == 1.0
    assert metrics.normalized_entropy(np.array([0, 9, 0, 0])) == 0.0
    # [1, 2, 0, 3] / 6, empty class contributes 0.
    p = np.array([1, 2, 3]) / 6
    assert metrics.normalized_entropy(hist) == pytest.approx(-(p * np.log(p)).sum() / np.log(4))
    assert metrics.normalized_entropy(np.array([1, 1, 0, 0])) == pytest.approx(0.5)
    with pytest.raises(ValueError, match=r"\[0, 4\)"):
        metrics.class_histogram(np.array([0, 4]), 4)
    with pytest.raises(ValueError, match="classes"):
        metrics.class_histogram(logits, 5)
    with pytest.raises(ValueError, match="empty"):
        metrics.class_histogram(np.array([], int), 4)
    with pytest.raises(ValueError, match="not all zero"):
        metrics.normalized_entropy(np.zeros(4))


def test_conditional_accuracy():
    logits = np.array([[2.0, 0.0, 1.0], [0.0, 3.0, 0.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    assert metrics.conditional_accuracy(logits, np.array([0, 1, 1, 2])) == 0.5
    assert metrics.conditional_accuracy(logits, np.array([0, 1, 2, 0])) == 1.0
    with pytest.raises(ValueError, match="does not match"):
        metrics.conditional_accuracy(logits, np.array([0, 1, 2]))
