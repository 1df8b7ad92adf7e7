"""Likelihoods on problems with a known answer: with the exact score of Gaussian (and
mixture) data, the probability-flow log-density is the closed-form density of p_eps."""

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


def _mixture_logpdf(sde, x, t):
    """log p_t(x) for the mixture carried to time t (Gaussian components stay Gaussian)."""
    t = jnp.full((1,), t)
    scale = float(sde.marginal_scale(t)[0])
    std = float(sde.marginal_std(t)[0])
    comps = [
        np.log(w) + stats.multivariate_normal(scale * m, (scale**2 * s**2 + std**2)).logpdf(x)
        for m, s, w in zip(MEANS, STDS, WEIGHTS, strict=True)
    ]
    return np.logaddexp(*comps)


def _points(n):
    return np.random.default_rng(0).normal(size=(n, 3)) * 0.8


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_exact_divergence_gives_the_closed_form_log_density(sde_name):
    sde = SDES[sde_name]
    score_fn = score.mixture_score_fn(sde, MEANS, STDS, WEIGHTS)
    fn = likelihood.get_likelihood_fn(sde, divergence="exact", eps=EPS, rtol=1e-6, atol=1e-6)
    x = _points(16)
    logp, z, nfe = jax.jit(lambda k, x: fn(k, score_fn, x))(jax.random.PRNGKey(0), x)
    assert z.shape == x.shape and int(nfe) > 10
    # The flow carries p_eps exactly onto p_T, which is close to, but not, the prior: the
    # model's log-density differs from the true one by log prior(z) - log p_T(z).
    prior_gap = np.asarray(sde.prior_logp(z)) - _mixture_logpdf(sde, np.asarray(z), sde.T)
    np.testing.assert_allclose(logp - prior_gap, _mixture_logpdf(sde, x, EPS), atol=1e-3)
    assert np.abs(prior_gap).max() < 0.1


def test_hutchinson_estimate_is_unbiased():
    sde = SDES["vp"]
    score_fn = score.mixture_score_fn(sde, MEANS, STDS, WEIGHTS)
    x = _points(4)
    exact = likelihood.get_likelihood_fn(sde, divergence="exact", eps=EPS)
    reference = exact(jax.random.PRNGKey(0), score_fn, x)[0]
    for name in ("hutchinson_rademacher", "hutchinson_gaussian"):
        fn = likelihood.get_likelihood_fn(sde, divergence=name, eps=EPS, rtol=1e-4, atol=1e-4)
        keys = jax.random.split(jax.random.PRNGKey(1), 200)
        estimates = jax.jit(jax.vmap(lambda k, fn=fn: fn(k, score_fn, x)[0]))(keys)
        single = np.asarray(estimates[0])
        assert not np.allclose(single, reference, atol=1e-3), "one probe is noisy"
        mean, sem = estimates.mean(0), estimates.std(0) / np.sqrt(len(keys))
        np.testing.assert_array_less(np.abs(mean - reference), 4 * sem + 1e-2)


def test_nfe_counts_every_right_hand_side_evaluation():
    sde = SDES["vp"]
    calls = [0]

    def bump():
        calls[0] += 1

    base = score.mixture_score_fn(sde, MEANS, STDS, WEIGHTS)

    def counted(x, t):
        jax.debug.callback(bump)
        return base(x, t)

    fn = likelihood.get_likelihood_fn(sde, eps=EPS)
    _, _, nfe = fn(jax.random.PRNGKey(0), counted, _points(2))
    jax.effects_barrier()
    assert int(nfe) == calls[0]


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
