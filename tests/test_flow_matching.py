"""Flow matching on Gaussian paths (diffusion/flows.py, the paths of sde_lib, the loss, the
flow samplers) against closed forms: for data N(mean, std^2 I) the optimal velocity, the
score, the loss at the optimum, the samples and the likelihood are all known exactly."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import edm, flows, likelihood, losses, sampling, score, sde_lib

MEAN = np.array([1.0, -2.0], np.float32)
STD = 0.5
PATHS = [sde_lib.LinearPath(), sde_lib.CosinePath()]
IDS = ["linear", "cosine"]


def _exact_velocity_score(sde):
    """(closed-form velocity, score read from it) of the Gaussian data."""
    velocity = flows.gaussian_velocity_fn(sde, MEAN, STD)
    return velocity, lambda x, t: flows.score_from_velocity(sde, velocity(x, t), x, t)


@pytest.mark.parametrize("sde", PATHS, ids=IDS)
def test_path_ends_derivatives_and_sde_agree(sde):
    t = jnp.linspace(0.01, sde.T, 7)
    ones = jnp.ones_like(t)
    d_alpha, d_sigma = sde.marginal_derivatives(t)
    np.testing.assert_allclose(d_alpha, jax.jvp(sde.marginal_scale, (t,), (ones,))[1], 1e-5)
    np.testing.assert_allclose(d_sigma, jax.jvp(sde.marginal_std, (t,), (ones,))[1], 1e-5)
    # The SDE carries the marginal variance: d sigma^2/dt = 2 (alpha'/alpha) sigma^2 + g^2.
    x = jnp.ones((7, 1))
    drift, g = sde.sde(x, t)
    var_rate = 2 * drift[:, 0] * sde.marginal_std(t) ** 2 + g**2
    # (float32 cancellation near T, where both terms are ~1/alpha: hence atol)
    np.testing.assert_allclose(var_rate, 2 * sde.marginal_std(t) * d_sigma, rtol=1e-4, atol=1e-4)
    assert float(sde.marginal_scale(jnp.asarray(0.0))) == 1.0
    assert float(sde.marginal_std(jnp.asarray(0.0))) == 0.0
    assert sde.ode_only and not sde_lib.VPSDE().ode_only


@pytest.mark.parametrize("sde", [*PATHS, sde_lib.VPSDE()], ids=[*IDS, "vp"])
def test_velocity_and_score_convert_exactly(sde):
    velocity, from_velocity = _exact_velocity_score(sde)
    exact_score = score.mixture_score_fn(sde, MEAN[None], [STD])
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2)) * 1.5
    t = jnp.array([0.02, 0.1, 0.3, 0.5, 0.8, 0.95])
    np.testing.assert_allclose(from_velocity(x, t), exact_score(x, t), rtol=2e-4, atol=2e-4)
    np.testing.assert_allclose(flows.velocity_from_score(sde, exact_score(x, t), x, t),
                               velocity(x, t), rtol=2e-4, atol=2e-4)
    # The probability-flow drift of the path's SDE is the velocity.
    drift = sde.reverse(exact_score, probability_flow=True).sde(x, t)[0]
    np.testing.assert_allclose(drift, velocity(x, t), rtol=2e-4, atol=2e-4)


def test_linear_path_velocity_network_reads_z_minus_x0():
    sde = sde_lib.LinearPath()
    x0, z = jnp.array([[0.3, -1.0]]), jnp.array([[1.2, 0.4]])
    t = jnp.array([0.4])
    net_fn = lambda x, c_noise: z - x0
    score_fn = score.get_score_fn(sde, net_fn, preconditioning="velocity")
    # x_t = (1 - t) x0 + t z, and v = z - x0 makes score = -z / t exactly.
    np.testing.assert_allclose(score_fn(0.6 * x0 + 0.4 * z, t), -z / 0.4, rtol=1e-5)


@pytest.mark.parametrize("sde", PATHS, ids=IDS)
def test_loss_at_the_optimal_velocity_is_the_conditional_variance(sde):
    eps = 1e-3
    loss_fn = losses.get_loss_fn(sde, objective="flow_matching", reduce_mean=False, eps=eps)
    _, optimal = _exact_velocity_score(sde)
    x = jnp.asarray(MEAN) + STD * jax.random.normal(jax.random.PRNGKey(1), (40_000, 2))
    key = jax.random.PRNGKey(2)
    loss = float(jax.jit(lambda x: loss_fn(optimal, key, x))(x))
    # E || v - v* ||^2 = D std^2 (alpha' sigma - alpha sigma')^2 / (alpha^2 std^2 + sigma^2).
    t = np.linspace(eps, sde.T, 20_001)
    alpha, sigma = sde.marginal_scale(t), sde.marginal_std(t)
    d_alpha, d_sigma = sde.marginal_derivatives(t)
    var = 2 * STD**2 * (d_alpha * sigma - alpha * d_sigma) ** 2 / (alpha**2 * STD**2 + sigma**2)
    assert loss == pytest.approx(float(np.trapezoid(var, t) / (sde.T - eps)), rel=0.03)
    biased = lambda x, t: optimal(x, t) + 0.1
    assert float(loss_fn(biased, key, x)) > loss


@pytest.mark.parametrize("name, steps, tol", [("flow_euler", 40, 0.1), ("flow_heun", 10, 0.01),
                                              ("ode", None, 1e-3)])
def test_flow_samplers_reproduce_the_gaussian(name, steps, tol):
    sde = sde_lib.LinearPath()
    _, score_fn = _exact_velocity_score(sde)
    sampler = sampling.get_sampler(name, sde, (2000, 2), steps=steps, eps=1e-3)
    key = jax.random.PRNGKey(3)
    x, nfe = jax.jit(lambda key: sampler(key, score_fn))(key)
    # The flow between Gaussians is affine: x_T (the sampler's own prior draw) goes to
    # mean + std (x_T - alpha_T mean) / sqrt(alpha_T^2 std^2 + sigma_T^2), draw by draw.
    x_T = sde.prior_sampling(key, (2000, 2))
    alpha_T = float(sde.marginal_scale(jnp.asarray(sde.T)))
    exact = MEAN + STD * (x_T - alpha_T * MEAN) / math.hypot(alpha_T * STD, sde.prior_std)
    assert float(jnp.max(jnp.abs(x - exact))) < tol
    np.testing.assert_allclose(np.mean(x, axis=0), np.mean(exact, axis=0), atol=tol)
    np.testing.assert_allclose(np.std(x, axis=0), np.std(exact, axis=0), atol=tol)
    if steps is not None:
        assert nfe == (2 if name == "flow_heun" else 1) * steps + 1


@pytest.mark.parametrize("sde", PATHS, ids=IDS)
def test_likelihood_of_the_closed_form_flow_is_the_gaussian_log_density(sde):
    _, score_fn = _exact_velocity_score(sde)
    x = jnp.asarray(MEAN) + STD * jax.random.normal(jax.random.PRNGKey(4), (8, 2))
    logp, _ = jax.jit(lambda x: likelihood.log_likelihood(
        sde, score_fn, x, jax.random.PRNGKey(5), divergence="exact", eps=1e-5))(x)
    exact = (-np.sum((x - MEAN) ** 2, axis=1) / (2 * STD**2)
             - 2 * math.log(STD) - math.log(2 * math.pi))
    # The prior N(0, sigma_T^2) stands for p_T = N(alpha_T mean, ...): ~1e-3 nats of it.
    np.testing.assert_allclose(logp, exact, atol=1e-2)


@pytest.mark.parametrize("name", ["euler_maruyama", "pc", "ancestral", "annealed_langevin"])
def test_reverse_sde_samplers_refuse_a_flow_path_in_one_line_naming_them(name):
    with pytest.raises(ValueError) as err:
        sampling.get_sampler(name, sde_lib.LinearPath(), (2, 2))
    message = str(err.value)
    assert f"sampler {name!r}" in message and "\n" not in message
    for ok in sampling.ODE_SAMPLERS:
        sampling.check_serves(ok, sde_lib.LinearPath())


def test_flow_matching_is_continuous_time_only():
    with pytest.raises(ValueError, match="flow_matching"):
        losses.get_loss_fn(sde_lib.LinearPath(), objective="flow_matching", continuous=False)


@pytest.mark.parametrize("sde", PATHS, ids=IDS)
def test_a_path_maps_noise_levels_to_times_and_back(sde):
    """sigma = std / alpha: t / (1 - t) on the linear path, tan(pi t / 2) on the cosine one;
    so EDM's grid serves the euler and heun samplers on a path."""
    t = jnp.linspace(1e-3, sde.T, 50)
    sigma = edm.edm_sigma(sde, t)
    closed = t / (1 - t) if isinstance(sde, sde_lib.LinearPath) else jnp.tan(0.5 * math.pi * t)
    np.testing.assert_allclose(sigma, closed, rtol=2e-5)
    np.testing.assert_allclose(edm.sigma_to_t(sde, sigma), t, rtol=1e-5, atol=1e-6)
    grid = edm.edm_time_grid(sde, 8, 1e-3)
    np.testing.assert_allclose(np.asarray(grid)[[0, -1]], [sde.T, 1e-3], rtol=1e-6)
    assert bool(jnp.all(grid[1:] < grid[:-1]))
