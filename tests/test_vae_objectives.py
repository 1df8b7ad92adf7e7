"""VAE objectives: decoder likelihoods, KL terms, ELBO and IWAE on a closed-form model."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae import elbo, likelihoods

DISCRETIZED = {
    "discretized_logistic": likelihoods.discretized_logistic_log_prob,
    "discretized_gaussian": likelihoods.discretized_gaussian_log_prob,
}


# ------------------------------------------------------------------------ likelihoods.py


def test_bernoulli_hand_values():
    logits = jnp.array([[0.0, 2.0], [-1.0, 3.0]])
    x = jnp.array([[1.0, 0.0], [0.0, 1.0]])
    sigmoid = lambda v: 1.0 / (1.0 + math.exp(-v))
    expected = [
        math.log(0.5) + math.log(1.0 - sigmoid(2.0)),
        math.log(1.0 - sigmoid(-1.0)) + math.log(sigmoid(3.0)),
    ]
    np.testing.assert_allclose(likelihoods.bernoulli_log_prob(logits, x), expected, rtol=1e-6)


@pytest.mark.parametrize("name", sorted(DISCRETIZED))
@pytest.mark.parametrize("num_bins", [256, 5])
def test_discretized_probabilities_sum_to_one(name, num_bins):
    # Every level of [-1, 1] as one example, for location/scale pairs from a point mass
    # between two levels to a scale that dwarfs the data range, inside and outside it.
    means = np.array([0.0, 0.3, -1.0, 1.0, 0.0017, 4.0, -3.0], np.float32)
    log_scales = np.array([-12.0, -5.0, -2.0, 0.0, 3.0, 12.0], np.float32)
    mean, log_scale = (a.reshape(1, -1) for a in np.meshgrid(means, log_scales))
    levels = np.linspace(-1.0, 1.0, num_bins, dtype=np.float32).reshape(-1, 1, 1)
    shape = (num_bins, mean.shape[1], 1)

    def log_p(mean, log_scale):
        # One (level, location, scale) triple per example: (num_bins * pairs,).
        fn = lambda m, s, x: DISCRETIZED[name](m, s, x, num_bins)
        flat = lambda a: jnp.broadcast_to(a.reshape(1, -1, 1), shape).reshape(-1, 1)
        return fn(flat(mean), flat(log_scale), jnp.broadcast_to(levels, shape).reshape(-1, 1))

    value_and_grad = jax.jit(
        jax.value_and_grad(
            lambda m, s: (jnp.sum(log_p(m, s)), log_p(m, s)), argnums=(0, 1), has_aux=True
        )
    )
    (_, lp), grads = value_and_grad(jnp.asarray(mean), jnp.asarray(log_scale))
    lp = np.asarray(lp).reshape(num_bins, -1)
    assert np.all(np.isfinite(lp))
    np.testing.assert_allclose(np.exp(lp).sum(axis=0), 1.0, atol=2e-5)
    # Finite gradients at the edge levels and in the far tails.
    assert all(np.all(np.isfinite(g)) for g in grads)


def test_discretized_against_float64_cdf_differences():
    from scipy import stats

    x = jnp.array([[-1.0, -1.0 + 2 / 255, 0.5, 1.0]])
    mean, log_scale = jnp.full_like(x, 0.45), jnp.full_like(x, -2.0)
    edges_hi = (np.asarray(x, np.float64) + 1 / 255 - 0.45) / math.exp(-2.0)
    edges_lo = (np.asarray(x, np.float64) - 1 / 255 - 0.45) / math.exp(-2.0)
    for name, dist in [
        ("discretized_logistic", stats.logistic),
        ("discretized_gaussian", stats.norm),
    ]:
        hi, lo = dist.cdf(edges_hi), dist.cdf(edges_lo)
        hi[..., -1], lo[..., 0] = 1.0, 0.0  # edge levels take the tails
        expected = np.sum(np.log(hi - lo))
        np.testing.assert_allclose(
            jax.jit(DISCRETIZED[name])(mean, log_scale, x), [expected], rtol=1e-5
        )


@pytest.mark.parametrize("name", sorted(DISCRETIZED))
def test_decoder_registry_mean_and_samples(name):
    params, log_prob = likelihoods.DECODER_LIKELIHOODS[name]
    assert params == 2
    num_bins, n = 8, 20_000
    # Decoder output (n, 1, 1, 2): mean in channel 0, log-scale in channel 1.
    out = jnp.broadcast_to(jnp.array([0.1, -1.2]), (n, 1, 1, 2))
    np.testing.assert_allclose(likelihoods.mean_image(name, out[:1]), [[[[0.1]]]])
    sample = jax.jit(likelihoods.sample_image, static_argnums=(0, 3))
    draws = sample(name, jax.random.key(0), out, num_bins)
    levels = np.linspace(-1.0, 1.0, num_bins, dtype=np.float32)
    index = np.rint((np.asarray(draws).ravel() + 1.0) * (num_bins - 1) / 2).astype(int)
    np.testing.assert_allclose(np.asarray(draws).ravel(), levels[index], atol=1e-6)
    # The draws fall on each level with the registry's probability of that level.
    probs = np.exp(
        jax.jit(log_prob, static_argnums=2)(out[:num_bins], levels.reshape(-1, 1, 1, 1), num_bins)
    )
    freq = np.bincount(index, minlength=num_bins) / n
    np.testing.assert_allclose(freq, probs, atol=4 * np.sqrt(0.25 / n))


def test_bernoulli_registry_and_errors():
    params, log_prob = likelihoods.DECODER_LIKELIHOODS["bernoulli"]
    logits = jnp.array([[[[0.0], [2.0]]]])
    x = jnp.array([[[[1.0], [0.0]]]])
    assert params == 1
    np.testing.assert_allclose(log_prob(logits, x, 256), likelihoods.bernoulli_log_prob(logits, x))
    np.testing.assert_allclose(
        likelihoods.mean_image("bernoulli", logits).ravel(),
        [0.5, 1 / (1 + math.exp(-2.0))],
        rtol=1e-6,
    )
    draws = likelihoods.sample_image("bernoulli", jax.random.key(1), logits)
    assert set(np.unique(draws)) <= {0.0, 1.0}
    with pytest.raises(ValueError, match=r"unknown decoder likelihood 'poisson'.*bernoulli"):
        likelihoods.mean_image("poisson", logits)
    with pytest.raises(ValueError, match="multiple of 2 decoder channels, got 3"):
        likelihoods.sample_image("discretized_logistic", jax.random.key(0), jnp.zeros((1, 3)))
    with pytest.raises(ValueError, match="num_bins must be an integer >= 2"):
        likelihoods.discretized_gaussian_log_prob(x, x, x, num_bins=1)


# ------------------------------------------------------------------------------- elbo.py


def test_gaussian_kl_closed_form_and_monte_carlo():
    np.testing.assert_allclose(elbo.gaussian_kl(jnp.zeros((2, 3)), jnp.zeros((2, 3))), 0.0)
    # KL(N(1, 1) || N(0, 1)) = 1/2; KL(N(0, 2) || N(0, 1)) = (2 - 1 - log 2) / 2.
    np.testing.assert_allclose(elbo.gaussian_kl(jnp.ones((1, 1)), jnp.zeros((1, 1))), [0.5])
    np.testing.assert_allclose(
        elbo.gaussian_kl(jnp.zeros((1, 1)), jnp.full((1, 1), math.log(2.0))),
        [(1.0 - math.log(2.0)) / 2],
        rtol=1e-6,
    )
    mean, logvar = np.array([0.5, -1.0, 0.0]), np.array([0.3, -0.7, 1.2])
    eps = np.asarray(jax.random.normal(jax.random.key(0), (200_000, 3)), np.float64)
    z = mean + np.exp(0.5 * logvar) * eps
    log_ratio = np.sum(-0.5 * (eps**2 + logvar) + 0.5 * z**2, axis=1)  # log q - log p
    closed = elbo.gaussian_kl(
        jnp.asarray(mean[None], jnp.float32), jnp.asarray(logvar[None], jnp.float32)
    )
    se = log_ratio.std() / math.sqrt(len(log_ratio))
    assert abs(float(closed[0]) - log_ratio.mean()) < 4 * se


def test_kl_weight_warmup():
    assert float(elbo.kl_weight(0, 0.5, 100)) == 0.0
    np.testing.assert_allclose(elbo.kl_weight(25, 0.5, 100), 0.125)
    assert float(elbo.kl_weight(100, 0.5, 100)) == 0.5
    assert float(elbo.kl_weight(10_000, 0.5, 100)) == 0.5
    assert float(elbo.kl_weight(0, 0.5, 0)) == 0.5
    np.testing.assert_allclose(jax.jit(lambda s: elbo.kl_weight(s, 1.0, 10))(jnp.int32(3)), 0.3)
    with pytest.raises(ValueError, match="warmup_steps must be non-negative"):
        elbo.kl_weight(0, 1.0, -1)


def test_free_bits_clamps_channels_by_their_batch_mean():
    # (B=2, 2 positions, C=3): per-example channel KLs [[1, .1, .4], [2, .1, .6]], so the
    # batch means are [1.5, 0.1, 0.5] and free_bits = 0.5 clamps channel 1 only.
    per_channel = np.array([[1.0, 0.1, 0.4], [2.0, 0.1, 0.6]], np.float32)
    kl_per_dim = jnp.asarray(np.repeat(per_channel[:, None] / 2, 2, axis=1))
    out = elbo.free_bits_kl(kl_per_dim, 0.5)
    np.testing.assert_allclose(out, [1.0 + 0.5 + 0.4, 2.0 + 0.5 + 0.6], rtol=1e-6)
    np.testing.assert_allclose(jnp.mean(out), 1.5 + 0.5 + 0.5, rtol=1e-6)
    grad = jax.grad(lambda k: jnp.sum(elbo.free_bits_kl(k, 0.5)))(kl_per_dim)
    np.testing.assert_array_equal(grad[..., 1], 0.0)  # a clamped channel gets no gradient
    np.testing.assert_array_equal(grad[..., [0, 2]], 1.0)
    np.testing.assert_allclose(elbo.free_bits_kl(kl_per_dim, 0.0), per_channel.sum(1), rtol=1e-6)
    with pytest.raises(ValueError, match="free_bits must be non-negative"):
        elbo.free_bits_kl(kl_per_dim, -1.0)


def test_bits_per_dim():
    np.testing.assert_allclose(elbo.bits_per_dim(jnp.array([-6 * math.log(2.0)]), 3), [2.0])


# Linear-Gaussian model: z ~ N(0, I_2), x | z ~ N(z, S2 I); p(x) = N(0, (1 + S2) I) and the
# posterior is N(x / (1 + S2), S2 / (1 + S2) I). The encoder is deliberately off: its mean
# is shrunk and its variance inflated.
S2 = 0.5
POST_VAR = S2 / (1 + S2)


def _encode(x):
    return 0.8 * x / (1 + S2), jnp.full_like(x, math.log(POST_VAR) + 0.4)


def _decode_log_prob(z, x):
    return jnp.sum(-0.5 * ((x - z) ** 2 / S2 + math.log(2 * math.pi * S2)), axis=-1)


def _log_px(x):
    var = 1 + S2
    return np.sum(-0.5 * (x**2 / var + np.log(2 * np.pi * var)), axis=-1)


def test_elbo_and_iwae_bounds_on_a_linear_gaussian_vae():
    batch = 4096
    x = jax.random.normal(jax.random.key(0), (batch, 2)) * math.sqrt(1 + S2)
    log_px = _log_px(np.asarray(x, np.float64))
    terms = jax.jit(lambda k: elbo.elbo_terms(k, _encode, _decode_log_prob, x))(jax.random.key(1))
    iwae = jax.jit(
        lambda k, num: elbo.iwae_bound(k, _encode, _decode_log_prob, x, num, chunk=16),
        static_argnums=1,
    )
    gaps = {k: np.asarray(iwae(jax.random.key(2 + k), k), np.float64) - log_px for k in (1, 4, 64)}
    elbo_gap = np.asarray(terms["elbo"], np.float64) - log_px
    se = lambda v: v.std() / math.sqrt(batch)

    # The expected ELBO gap is KL(q(z | x) || p(z | x)), in closed form.
    q_mean, q_logvar = (np.asarray(a, np.float64) for a in _encode(x))
    post_kl = 0.5 * np.sum(
        np.exp(q_logvar) / POST_VAR
        + (q_mean - np.asarray(x) / (1 + S2)) ** 2 / POST_VAR
        - 1
        - q_logvar
        + math.log(POST_VAR),
        axis=-1,
    )
    assert abs(elbo_gap.mean() + post_kl.mean()) < 4 * se(elbo_gap + post_kl)
    np.testing.assert_allclose(terms["elbo"], terms["log_px"] - terms["kl"], rtol=1e-6)
    np.testing.assert_allclose(terms["kl"], elbo.gaussian_kl(*_encode(x)), rtol=1e-6)
    # IWAE with one sample is the ELBO in expectation, ...
    assert abs(gaps[1].mean() - elbo_gap.mean()) < 4 * se(gaps[1] - elbo_gap)
    # ... and tightens towards log p(x) as K grows.
    assert gaps[1].mean() < gaps[4].mean() < gaps[64].mean()
    assert gaps[1].mean() < -0.1 and abs(gaps[64].mean()) < 0.01
    assert gaps[64].mean() < 4 * se(gaps[64])


def test_iwae_chunking_and_errors():
    x = jax.random.normal(jax.random.key(3), (5, 2))
    bound = jax.jit(
        lambda chunk: elbo.iwae_bound(
            jax.random.key(4), _encode, _decode_log_prob, x, num_samples=12, chunk=chunk
        ),
        static_argnums=0,
    )
    np.testing.assert_allclose(bound(5), bound(None), rtol=1e-6)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        elbo.iwae_bound(jax.random.key(0), _encode, _decode_log_prob, x, num_samples=0)
