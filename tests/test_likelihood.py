"""Likelihoods on problems with a known answer: with the exact score of Gaussian (and
mixture) data, the probability-flow log-density is the closed-form density of p_eps; the
Hutchinson estimates are unbiased with variance / num_probes; importance-weighted
dequantization tightens the uniform bound towards the closed-form 8-bit probability."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from diffusion import likelihood, score, sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}
EPS = 1e-5
# Two modes with unequal mass in 3-D.
MEANS = np.array([[-1.0, 0.5, 0.0], [1.0, -0.5, 0.5]])
STDS, WEIGHTS = np.array([0.4, 0.3]), np.array([0.3, 0.7])


def _mixture_logpdf(sde, x, t, means=MEANS, stds=STDS, weights=WEIGHTS):
    """log p_t(x) for the mixture carried to time t (Gaussian components stay Gaussian)."""
    t = jnp.full((1,), t)
    scale = float(sde.marginal_scale(t)[0])
    std = float(sde.marginal_std(t)[0])
    comps = [
        np.log(w) + stats.multivariate_normal(scale * m, (scale**2 * s**2 + std**2)).logpdf(x)
        for m, s, w in zip(means, stds, weights, strict=True)
    ]
    return np.logaddexp.reduce(comps, axis=0)


def _points(n):
    return np.random.default_rng(0).normal(size=(n, 3)) * 0.8


# A 3-component mixture in 6-D for the accuracy goal (exact divergence: 6 JVPs).
_RNG = np.random.default_rng(1)
MIXTURE_6D = dict(means=_RNG.normal(size=(3, 6)), stds=np.array([0.4, 0.3, 0.6]),
                  weights=np.array([0.2, 0.5, 0.3]))


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_divergence_gives_the_true_log_density_within_a_hundredth_of_a_nat(sde_name):
    sde = SDES[sde_name]
    score_fn = score.mixture_score_fn(sde, **MIXTURE_6D)
    options = dict(divergence="exact", eps=EPS, rtol=1e-6, atol=1e-6)
    x = np.random.default_rng(2).normal(size=(16, 6)) * 0.8

    @jax.jit
    def run(key, x):  # the public one-call API, and the latent of the same solve
        logp, nfe = likelihood.log_likelihood(sde, score_fn, x, key, **options)
        return logp, nfe, likelihood.get_likelihood_fn(sde, **options)(key, score_fn, x)

    logp, nfe, (logp_fn, z, _) = run(jax.random.PRNGKey(0), x)
    assert logp.shape == (16,) and z.shape == x.shape and int(nfe) > 10
    np.testing.assert_array_equal(logp, logp_fn)
    # The flow carries p_eps exactly onto p_T, which is close to, but not, the prior: the
    # model's log-density differs from the true one by log prior(z) - log p_T(z).
    prior_gap = np.asarray(sde.prior_logp(z)) - _mixture_logpdf(sde, np.asarray(z), sde.T,
                                                                 **MIXTURE_6D)
    error = np.asarray(logp) - prior_gap - _mixture_logpdf(sde, x, EPS, **MIXTURE_6D)
    # The goal: within 0.01 nats per example. Measured: at most 4e-5 (VP), 5e-5 (VE) nats,
    # while the prior gap accounted for reaches 0.02 (VP) and 0.06 (VE) nats.
    assert np.abs(error).max() < 0.01, np.abs(error).max()
    assert np.abs(error).max() < 1e-3 and np.abs(prior_gap).max() < 0.1


def _estimates(sde, score_fn, x, keys, **options):
    fn = jax.vmap(lambda k: likelihood.log_likelihood(sde, score_fn, x, k, **options)[0])
    return np.asarray(jax.jit(fn)(keys))


def test_hutchinson_estimates_are_unbiased_and_several_probes_divide_the_variance():
    sde = SDES["vp"]
    score_fn = score.mixture_score_fn(sde, MEANS, STDS, WEIGHTS)
    x = _points(4)
    reference = likelihood.log_likelihood(sde, score_fn, x, jax.random.PRNGKey(0),
                                          divergence="exact", eps=EPS)[0]
    keys = jax.random.split(jax.random.PRNGKey(1), 200)
    estimates = {}
    for name, num_probes in (("hutchinson_rademacher", 1), ("hutchinson_gaussian", 1),
                             ("hutchinson_rademacher", 8)):
        estimates[name, num_probes] = values = _estimates(
            sde, score_fn, x, keys, divergence=name, eps=EPS, rtol=1e-4, atol=1e-4,
            num_probes=num_probes)
        assert not np.allclose(values[0], reference, atol=1e-3), "probes are noisy"
        mean, sem = values.mean(0), values.std(0) / np.sqrt(len(keys))
        np.testing.assert_array_less(np.abs(mean - reference), 4 * sem + 1e-2)
    # One probe gives v^T A v (A the Jacobian integrated along the path); eight average
    # eight independent ones: variance / 8 (measured 7.5x to 8.9x; the sampling spread of
    # a variance ratio from 200 draws is ~15%).
    ratio = (estimates["hutchinson_rademacher", 1].var(0)
             / estimates["hutchinson_rademacher", 8].var(0))
    assert np.all((ratio > 4) & (ratio < 16)), ratio


def test_the_divergence_of_several_probes_is_their_mean_quadratic_form():
    a = jnp.array([[2.0, 1.0], [-3.0, 0.5]])
    probes = jnp.array([[[1.0, -1.0]], [[1.0, 1.0]], [[0.0, 2.0]]])  # (M=3, B=1, D=2)
    out, div = likelihood._hutchinson_divergence(lambda y: y @ a.T, jnp.ones((1, 2)), probes)
    expected = np.mean([v @ a @ v for v in np.asarray(probes[:, 0])])
    np.testing.assert_allclose(out, [[3.0, -2.5]])
    np.testing.assert_allclose(div, [expected], rtol=1e-6)
    _, single = likelihood._hutchinson_divergence(lambda y: y @ a.T, jnp.ones((1, 2)),
                                                  probes[:1])
    np.testing.assert_allclose(single, [float(probes[0, 0] @ a @ probes[0, 0])])


@pytest.mark.parametrize("num_probes", [1, 4])
def test_nfe_counts_every_right_hand_side_evaluation(num_probes):
    sde = SDES["vp"]
    calls = [0]

    def bump():
        calls[0] += 1

    base = score.mixture_score_fn(sde, MEANS, STDS, WEIGHTS)

    def counted(x, t):
        jax.debug.callback(bump)
        return base(x, t)

    fn = likelihood.get_likelihood_fn(sde, eps=EPS, num_probes=num_probes)
    _, _, nfe = fn(jax.random.PRNGKey(0), counted, _points(2))
    jax.effects_barrier()
    # Several probes share the score evaluation: one call per right-hand side.
    assert int(nfe) == calls[0]


# An 8-bit "model" with a closed-form answer: N(MU, SIGMA^2 I) in the centred data space,
# half a quantization bin (2 / 256) wide, so that the density varies within a bin.
MU, SIGMA, BIN = np.array([-0.3, 0.1, 0.52, 0.9]), 1.0 / 256, 2.0 / 256


def _gaussian_log_density(key, x):
    del key
    z = (x - MU) / SIGMA
    return jnp.sum(-0.5 * z**2 - 0.5 * math.log(2 * math.pi * SIGMA**2), axis=-1), 0


def _bin_edges(images):
    lower = images.astype(np.float64) * BIN - 1.0
    return lower, lower + BIN


def test_importance_weighted_dequantization_tightens_towards_the_8bit_probability():
    # Images whose bins lie around MU, from 2 bins below to 1 above.
    centre = np.floor((MU + 1.0) / BIN).astype(np.int64)
    images = (centre + np.arange(-2, 2)[:, None]).astype(np.uint8)  # (4, 4)
    lower, upper = _bin_edges(images)
    # log P(k) - D log BIN: the exact log-mean density over the bin, per image.
    cdf = stats.norm.cdf
    exact = np.sum(np.log((cdf((upper - MU) / SIGMA) - cdf((lower - MU) / SIGMA)) / BIN), -1)
    # E_u log p(x(k + u)): the uniform (K = 1) bound, in closed form.
    mid = (lower + upper) / 2
    uniform = np.sum(-0.5 * ((mid - MU) ** 2 + BIN**2 / 12) / SIGMA**2
                     - 0.5 * np.log(2 * np.pi * SIGMA**2), -1)
    keys = jax.random.split(jax.random.PRNGKey(0), 2000)

    def draws(k):
        fn = lambda key: likelihood.dequantized_log_likelihood(
            _gaussian_log_density, key, images, centered=True, num_dequant_samples=k)[0]
        return np.asarray(jax.jit(jax.vmap(fn))(keys), np.float64)

    means, sems = {}, {}
    for k in (1, 4, 64):
        values = draws(k)
        means[k], sems[k] = values.mean(0), values.std(0) / np.sqrt(len(keys))
    # K = 1 is the uniform-dequantization bound, on average exactly.
    np.testing.assert_array_less(np.abs(means[1] - uniform), 4 * sems[1])
    # Larger K: a larger (tighter) bound on average, never above the truth.
    assert np.all(means[4] > means[1] + 4 * np.hypot(sems[1], sems[4]))
    assert np.all(means[64] > means[4])
    np.testing.assert_array_less(means[64], exact + 4 * sems[64])
    # The gap to log P(k) shrinks: K = 64 closes most of the K = 1 gap (0.15 to 7.4 nats
    # here; measured: 3% to 9% of it is left).
    assert np.all(exact - means[64] < 0.2 * (exact - means[1])), (exact - means[1], means)
    # bits/dim of the exact value is -log2 P(k) / D.
    log_prob = exact + images.shape[1] * np.log(BIN)
    np.testing.assert_allclose(likelihood.bits_per_dim(exact, (4,), centered=True),
                               -log_prob / (4 * np.log(2.0)), rtol=1e-6)


def test_one_dequantization_sample_is_the_uniform_bound_exactly():
    logps = jnp.array([[-3.0, 7.5, -1e4]])
    np.testing.assert_array_equal(likelihood.importance_weighted_logp(logps), logps[0])
    # K samples: log-mean-exp, at least their mean (Jensen), at most their max.
    logps = jax.random.normal(jax.random.PRNGKey(0), (5, 7)) * 3
    iw = np.asarray(likelihood.importance_weighted_logp(logps))
    np.testing.assert_allclose(iw, np.log(np.mean(np.exp(np.asarray(logps, np.float64)), 0)),
                               rtol=1e-5)
    assert np.all(iw >= np.asarray(logps).mean(0)) and np.all(iw <= np.asarray(logps).max(0))
    # With K = 1 the estimate is the model's log-density at one dequantized image.
    images = np.array([[0, 17, 255, 128]], np.uint8)
    logp, nfe = likelihood.dequantized_log_likelihood(
        lambda key, x: (jnp.sum(x, -1), 3), jax.random.PRNGKey(0), images, centered=False)
    assert int(nfe) == 3 and logp.shape == (1,)
    lower = images.sum() / 256
    assert lower <= float(logp[0]) < lower + 4 / 256


def test_bits_per_dim_of_the_uniform_density_is_eight():
    # Uniformly dequantized uniform 8-bit data: density 1 on [0, 1]^D, 2^-D on [-1, 1]^D.
    shape = (8, 8, 1)
    np.testing.assert_allclose(
        likelihood.bits_per_dim(np.zeros(3), shape, centered=False), [8.0] * 3
    )
    logp_centered = np.full(3, -64 * np.log(2.0))
    np.testing.assert_allclose(
        likelihood.bits_per_dim(logp_centered, shape, centered=True), [8.0] * 3, rtol=1e-6
    )


def test_errors():
    sde = SDES["vp"]
    with pytest.raises(ValueError, match="unknown divergence 'hutch'"):
        likelihood.get_likelihood_fn(sde, divergence="hutch")
    with pytest.raises(ValueError, match="eps must be in"):
        likelihood.get_likelihood_fn(sde, eps=0.0)
    with pytest.raises(ValueError, match="unknown ODE solver"):
        likelihood.get_likelihood_fn(sde, solver="rk4")
    with pytest.raises(ValueError, match="num_probes must be a positive integer, got 0"):
        likelihood.get_likelihood_fn(sde, num_probes=0)
    with pytest.raises(ValueError, match="'exact' takes none"):
        likelihood.get_likelihood_fn(sde, divergence="exact", num_probes=2)
    with pytest.raises(ValueError, match="num_dequant_samples must be a positive integer"):
        likelihood.dequantized_log_likelihood(
            _gaussian_log_density, jax.random.PRNGKey(0), np.zeros((1, 4), np.uint8),
            centered=True, num_dequant_samples=0)
