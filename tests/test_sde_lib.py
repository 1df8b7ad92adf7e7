"""Forward SDEs: marginals (incl. float32 accuracy at small t), drift/diffusion consistency,
priors, discretisations, reverses and the config registry."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from scipy import stats

from diffusion import sde_lib

SDES = {
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000),
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000),
}


def _reference_std(name: str, t: np.ndarray) -> np.ndarray:
    """Marginal std in float64 from the textbook formulas."""
    t = t.astype(np.float64)
    integral = 0.1 * t + 0.5 * t**2 * (20.0 - 0.1)
    return {
        "vp": lambda: np.sqrt(1.0 - np.exp(-integral)),
        "subvp": lambda: 1.0 - np.exp(-integral),
        "ve": lambda: 0.01 * (50.0 / 0.01) ** t,
    }[name]()


@pytest.mark.parametrize("name", SDES)
def test_marginal_std_float32_accurate_at_small_t(name):
    sde = SDES[name]
    t = np.array([1e-5, 3e-5, 1e-4, 1e-3, 0.1, 0.5, 1.0], np.float32)
    std = np.asarray(sde.marginal_std(jnp.asarray(t)))
    assert std.dtype == np.float32
    assert np.all(np.isfinite(std)) and np.all(std > 0)
    np.testing.assert_allclose(std, _reference_std(name, t), rtol=1e-3)


@pytest.mark.parametrize("name", SDES)
@pytest.mark.parametrize("shape", [(5, 2), (5, 4, 3, 2)])
def test_marginal_prob_shapes_and_values(name, shape):
    sde = SDES[name]
    x0 = jax.random.normal(jax.random.key(0), shape)
    t = jnp.linspace(1e-3, 1.0, shape[0])
    mean, std = sde.marginal_prob(x0, t)
    assert mean.shape == shape and std.shape == (shape[0],)
    scale = np.asarray(sde.marginal_scale(t))
    np.testing.assert_allclose(mean, scale.reshape((-1,) + (1,) * (len(shape) - 1)) * x0, rtol=1e-6)
    # A scalar t is broadcast to the batch.
    mean_s, std_s = sde.marginal_prob(x0, 0.3)
    np.testing.assert_allclose(std_s, np.full(shape[0], sde.marginal_std(jnp.float32(0.3))))
    assert mean_s.shape == shape


@pytest.mark.parametrize("name", SDES)
def test_marginals_solve_the_moment_equations(name):
    """For dx = f(t) x dt + g(t) dw the kernel N(scale x0, std^2) must satisfy
    scale' = f scale and (std^2)' = 2 f std^2 + g^2: ties sde() to marginal_prob()."""
    sde = SDES[name]
    one = jnp.ones((1, 1))

    def coefficients(t):
        drift, g = sde.sde(one, jnp.reshape(t, (1,)))
        return drift[0, 0], g[0]

    for t in [0.05, 0.3, 0.7, 0.95]:
        t = jnp.float32(t)
        f, g = coefficients(t)
        dscale = jax.grad(sde.marginal_scale)(t)
        dvar = jax.grad(lambda s: sde.marginal_std(s) ** 2)(t)
        np.testing.assert_allclose(dscale, f * sde.marginal_scale(t), rtol=1e-4, atol=1e-6)
        var = sde.marginal_std(t) ** 2
        np.testing.assert_allclose(dvar, 2 * f * var + g**2, rtol=1e-3)


def test_drift_and_diffusion_formulas():
    x = jnp.arange(6.0).reshape(3, 2)
    t = jnp.array([0.0, 0.5, 1.0])
    beta = 0.1 + t * 19.9
    vp_drift, vp_g = SDES["vp"].sde(x, t)
    np.testing.assert_allclose(vp_drift, -0.5 * beta[:, None] * x, rtol=1e-6)
    np.testing.assert_allclose(vp_g, np.sqrt(beta), rtol=1e-6)
    sub_drift, sub_g = SDES["subvp"].sde(x, t)
    integral = 0.1 * t + 0.5 * t**2 * 19.9
    np.testing.assert_allclose(sub_drift, vp_drift, rtol=1e-6)
    np.testing.assert_allclose(sub_g, np.sqrt(beta * (1 - np.exp(-2 * integral))), rtol=1e-5)
    ve_drift, ve_g = SDES["ve"].sde(x, t)
    sigma = 0.01 * 5000.0**t
    np.testing.assert_array_equal(ve_drift, 0.0)
    np.testing.assert_allclose(ve_g, sigma * np.sqrt(2 * np.log(5000.0)), rtol=1e-5)


@pytest.mark.parametrize("name", SDES)
def test_prior_sampling_and_logp(name):
    sde = SDES[name]
    z = sde.prior_sampling(jax.random.key(1), (4000, 3, 2, 1))
    scale = 50.0 if name == "ve" else 1.0
    assert z.shape == (4000, 3, 2, 1)
    assert abs(float(jnp.std(z)) / scale - 1.0) < 0.03
    logp = sde.prior_logp(z[:7])
    expected = stats.norm.logpdf(np.asarray(z[:7], np.float64), scale=scale).sum(axis=(1, 2, 3))
    assert logp.shape == (7,)
    np.testing.assert_allclose(logp, expected, rtol=1e-5)


def test_vp_discretize_matches_ddpm_tables():
    sde = SDES["vp"]
    x = jax.random.normal(jax.random.key(2), (4, 3))
    i = np.array([0, 1, 500, 999])
    f, g = sde.discretize(x, jnp.asarray(i / 999.0, jnp.float32))
    beta = 0.1 / 1000 + i * (20.0 - 0.1) / 1000 / 999
    np.testing.assert_allclose(g, np.sqrt(beta), rtol=1e-5)
    np.testing.assert_allclose(f, (np.sqrt(1 - beta)[:, None] - 1) * np.asarray(x), rtol=1e-4)
    np.testing.assert_allclose(sde.alphas_cumprod, np.cumprod(1 - sde.discrete_betas))
    np.testing.assert_allclose(sde.sqrt_1m_alphas_cumprod**2 + sde.sqrt_alphas_cumprod**2, 1.0)


def test_ve_discretize_matches_smld_ladder():
    sde = SDES["ve"]
    sigmas = np.exp(np.linspace(np.log(0.01), np.log(50.0), 1000))
    np.testing.assert_allclose(sde.discrete_sigmas, sigmas)
    x = jnp.ones((3, 2))
    i = np.array([0, 1, 999])
    f, g = sde.discretize(x, jnp.asarray(i / 999.0, jnp.float32))
    np.testing.assert_array_equal(f, 0.0)
    previous = np.where(i == 0, 0.0, sigmas[np.maximum(i - 1, 0)])
    np.testing.assert_allclose(g, np.sqrt(sigmas[i] ** 2 - previous**2), rtol=1e-4)
    # The ladder's levels are the continuous marginal stds at t = i / (N - 1).
    np.testing.assert_allclose(sde.marginal_std(jnp.asarray(i / 999.0)), sigmas[i], rtol=1e-5)


@pytest.mark.parametrize("name", ["vp", "ve"])
def test_discretize_on_any_grid_composes_to_the_marginal(name):
    """Chaining the exact-transition steps over a coarse grid reproduces the marginal:
    prod alpha = scale(1)^2 / scale(t0)^2 for VP, sum G^2 = sigma(1)^2 - sigma(t0)^2 for VE."""
    sde = SDES[name]
    grid = np.linspace(1e-3, 1.0, 38)
    x = jnp.ones((grid.size - 1, 1))
    t, dt = jnp.asarray(grid[1:]), jnp.asarray(np.diff(grid))
    f, g = sde.discretize(x, t, dt)
    t0, t1 = jnp.float32(grid[0]), jnp.float32(1.0)
    if name == "vp":
        log_alpha = 2 * np.log1p(np.asarray(f[:, 0], np.float64))
        expected = 2 * np.log(float(sde.marginal_scale(t1)) / float(sde.marginal_scale(t0)))
        np.testing.assert_allclose(log_alpha.sum(), expected, rtol=1e-4)
        np.testing.assert_allclose(g**2, -np.expm1(log_alpha), rtol=1e-3)
    else:
        expected = float(sde.marginal_std(t1)) ** 2 - float(sde.marginal_std(t0)) ** 2
        np.testing.assert_allclose(np.sum(np.asarray(g, np.float64) ** 2), expected, rtol=1e-4)


def test_subvp_discretize_is_euler():
    sde = SDES["subvp"]
    x = jax.random.normal(jax.random.key(3), (3, 2))
    t = jnp.array([0.1, 0.5, 0.9])
    drift, diffusion = sde.sde(x, t)
    f, g = sde.discretize(x, t)
    np.testing.assert_allclose(f, drift / 1000, rtol=1e-6)
    np.testing.assert_allclose(g, diffusion * math.sqrt(1e-3), rtol=1e-6)


@pytest.mark.parametrize("name", SDES)
def test_reverse_sde_and_probability_flow(name):
    sde = SDES[name]
    x = jax.random.normal(jax.random.key(4), (3, 2, 2, 1))
    t = jnp.array([0.2, 0.5, 0.8])
    score_fn = lambda x, t: -x * (1.0 + t)[:, None, None, None]
    drift, g = sde.sde(x, t)
    score = score_fn(x, t)
    g2 = (g**2)[:, None, None, None]
    rev_drift, rev_g = sde.reverse(score_fn).sde(x, t)
    np.testing.assert_allclose(rev_drift, drift - g2 * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(rev_g, g)
    pf_drift, pf_g = sde.reverse(score_fn, probability_flow=True).sde(x, t)
    np.testing.assert_allclose(pf_drift, drift - 0.5 * g2 * score, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pf_g, 0.0)
    f, big_g = sde.discretize(x, t)
    rev_f, rev_big_g = sde.reverse(score_fn).discretize(x, t)
    np.testing.assert_allclose(rev_f, f - (big_g**2)[:, None, None, None] * score, atol=1e-5)
    np.testing.assert_allclose(rev_big_g, big_g)
    assert sde.reverse(score_fn).N == sde.N and sde.reverse(score_fn).T == 1.0


def test_get_sde_from_config():
    config = ml_collections.ConfigDict(
        {
            "training": {"sde": "vesde"},
            "model": {
                "sigma_min": 0.02,
                "sigma_max": 90.0,
                "beta_min": 0.1,
                "beta_max": 20.0,
                "num_scales": 200,
            },
        }
    )
    assert sde_lib.get_sde(config) == sde_lib.VESDE(sigma_min=0.02, sigma_max=90.0, N=200)
    config.training.sde = "subvpsde"
    assert sde_lib.get_sde(config) == sde_lib.subVPSDE(0.1, 20.0, 200)
    config.training.sde = "VPSDE"
    assert isinstance(sde_lib.get_sde(config), sde_lib.VPSDE)
    config.training.sde = "edm"
    with pytest.raises(ValueError, match=r"subvpsde.*vesde.*vpsde"):
        sde_lib.get_sde(config)
