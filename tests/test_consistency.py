"""Consistency models (diffusion/consistency.py) against closed forms. For data N(mu, s^2)
and x = x0 + sigma z the probability-flow map from sigma to sigma' is linear,
x' = mu + sqrt(s^2 + sigma'^2) / sqrt(s^2 + sigma^2) (x - mu), so the consistency function
f*(x, sigma) (the map to sigma_min), the teacher's ODE step and multistep sampling are all
known exactly; the boundary condition f(x, sigma_min) = x holds bit for bit."""

import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import consistency

MU, S = 0.7, 0.5
SIGMA_MIN, SIGMA_MAX, RHO = 0.002, 80.0, 7.0


def flow_map(x, sigma, sigma_to):
    """The probability-flow ODE of N(MU, S^2) data from level sigma to sigma_to."""
    ratio = jnp.sqrt(S**2 + sigma_to**2) / jnp.sqrt(S**2 + sigma**2)
    return MU + ratio.reshape(-1, *[1] * (x.ndim - 1)) * (x - MU)


def exact_f(x, sigma):
    return flow_map(x, sigma, SIGMA_MIN)


def exact_denoiser(x, sigma):
    """E[x0 | x] of N(MU, S^2) data at level sigma (B,)."""
    gain = (S**2 / (S**2 + sigma**2)).reshape(-1, *[1] * (x.ndim - 1))
    return MU + gain * (x - MU)


def test_the_boundary_condition_holds_exactly_whatever_the_network_says():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1)) * 3.0
    wild = lambda x, c_noise: 1e6 * jnp.sin(x) + c_noise.reshape(-1, 1, 1, 1)
    for sigma_data in (0.5, 0.3, 1.7):
        f = consistency.consistency_fn(wild, lambda s: 999.0 * s, sigma_min=SIGMA_MIN,
                                       sigma_data=sigma_data)
        out = jax.jit(f)(x, jnp.full((4,), SIGMA_MIN))
        assert np.array_equal(np.asarray(out), np.asarray(x))
        c_skip, c_out = consistency.skip_out(jnp.float32(SIGMA_MIN), SIGMA_MIN, sigma_data)
        assert float(c_skip) == 1.0 and float(c_out) == 0.0
    # Away from sigma_min the network counts: c_skip -> 0 and c_out -> sigma_data.
    c_skip, c_out = consistency.skip_out(jnp.float32(SIGMA_MAX), SIGMA_MIN, 0.5)
    assert float(c_skip) < 1e-4 and float(c_out) == pytest.approx(0.5, rel=1e-4)


def test_the_denoiser_reading_keeps_the_boundary_and_is_exact_on_straight_paths():
    x = jax.random.normal(jax.random.PRNGKey(0), (4, 8, 8, 1)) * 3.0
    wild = lambda x, sigma: 1e6 * jnp.sin(x) + sigma.reshape(-1, 1, 1, 1)
    f = consistency.denoiser_consistency_fn(wild, sigma_min=SIGMA_MIN)
    assert np.array_equal(np.asarray(jax.jit(f)(x, jnp.full((4,), SIGMA_MIN))), np.asarray(x))
    # Data at a point MU: the flow is a straight line to MU, which one Euler step along the
    # exact denoiser (MU itself) follows exactly to sigma_min.
    point = consistency.denoiser_consistency_fn(lambda x, sigma: jnp.full_like(x, MU),
                                                sigma_min=SIGMA_MIN)
    for level in (0.01, 1.0, SIGMA_MAX):
        sigma = jnp.full((4,), level)
        expected = MU + (SIGMA_MIN / level) * (x - MU)
        np.testing.assert_allclose(point(x, sigma), expected, rtol=1e-5, atol=1e-6)


def test_grid_ends_exactly_pads_with_sigma_max_and_the_curriculum_doubles():
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 17, RHO)
    assert grid.shape == (18,) and grid[0] == jnp.float32(SIGMA_MIN)
    assert float(grid[-1]) == pytest.approx(SIGMA_MAX) and bool(jnp.all(jnp.diff(grid) > 0))
    padded = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, jnp.int32(10), RHO, size=21)
    np.testing.assert_allclose(padded[:11], consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 10,
                                                                    RHO), rtol=1e-6)
    assert bool(jnp.all(padded[10:] == padded[10]))
    # s0 = 10, s1 = 1280, K = 800: 8 stages of K' = 100 steps.
    stages = [int(consistency.intervals_at(k, 800, 10, 1280)) for k in (0, 99, 100, 250, 799)]
    assert stages == [10, 10, 20, 40, 1280]
    assert int(consistency.intervals_at(123, 800, 17, 17)) == 17


def test_teacher_heun_step_follows_the_gaussian_probability_flow():
    x = MU + 3.0 * jax.random.normal(jax.random.PRNGKey(1), (64, 2))
    sigma, sigma_next = jnp.full((64,), 3.0), jnp.full((64,), 2.5)
    heun = consistency.SOLVERS["heun"](exact_denoiser, x, sigma, sigma_next)
    euler = consistency.SOLVERS["euler"](exact_denoiser, x, sigma, sigma_next)
    exact = flow_map(x, sigma, sigma_next)
    heun_err, euler_err = (float(jnp.max(jnp.abs(y - exact))) for y in (heun, euler))
    assert heun_err < 1e-3 < euler_err and heun_err < euler_err / 4


def _loss(student, target, partner, key, x0, **options):
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 17, RHO)
    return float(jax.jit(lambda x0: consistency.consistency_loss(
        student, target, key, x0, grid=grid, intervals=jnp.int32(17), partner=partner,
        **options))(x0))


def test_distillation_loss_vanishes_at_the_exact_consistency_function_only():
    x0 = MU + S * jax.random.normal(jax.random.PRNGKey(2), (4096, 2))
    key = jax.random.PRNGKey(3)
    teacher = lambda x0, z, x_next, s_next, s: consistency.SOLVERS["heun"](
        exact_denoiser, x_next, s_next, s)
    at_optimum = _loss(exact_f, exact_f, teacher, key, x0)
    off = lambda x, sigma: exact_f(x, sigma) * 1.05
    # What is left at f* is the Heun step's own error on the 18-level grid.
    assert at_optimum < 2e-5 and at_optimum < _loss(off, exact_f, teacher, key, x0) / 50
    # Training's partner x0 + sigma_n z is off the trajectory: the same f* has a loss.
    same_noise = lambda x0, z, x_next, s_next, s: x0 + s.reshape(-1, 1) * z
    assert _loss(exact_f, exact_f, same_noise, key, x0) > 100 * at_optimum


def test_improved_recipe_pieces_pseudo_huber_and_lognormal_levels():
    diff = jnp.full((1, 8, 8, 1), 0.1)
    c = 0.00054 * 8.0
    assert float(consistency.DISTANCES["pseudo_huber"](diff)[0]) == pytest.approx(
        math.sqrt(64 * 0.01 + c**2) - c, rel=1e-6)
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 1280, RHO)
    probs = jnp.exp(consistency.NOISE_LEVELS["lognormal"](grid, 1280, -1.1, 2.0))
    # The intervals hold the mass of ln sigma ~ N(-1.1, 4) between the grid's ends.
    cdf = lambda s: 0.5 * (1 + math.erf((math.log(s) + 1.1) / (2.0 * math.sqrt(2))))
    assert float(jnp.sum(probs)) == pytest.approx(2 * (cdf(SIGMA_MAX) - cdf(SIGMA_MIN)),
                                                  rel=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_multistep_sampling_with_the_exact_function_draws_the_data(steps):
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 17, RHO)
    sigmas = consistency.sampling_sigmas(grid, steps)
    assert float(sigmas[0]) == pytest.approx(SIGMA_MAX) and sigmas.shape == (steps,)
    key = jax.random.PRNGKey(4)
    x = jax.jit(lambda k: consistency.multistep_sample(exact_f, k, (20_000, 1), sigmas,
                                                       SIGMA_MIN))(key)
    if steps == 1:  # draw by draw: f*(sigma_max z)
        z = jax.random.normal(jax.random.split(key, 1)[0], (20_000, 1))
        np.testing.assert_allclose(x, exact_f(SIGMA_MAX * z, jnp.full((20_000,), SIGMA_MAX)),
                                   rtol=1e-5, atol=1e-5)
    # Every step re-noises to the marginal at its level, which f* maps to N(MU, S^2 + ...).
    assert float(jnp.mean(x)) == pytest.approx(MU * (1 - S / SIGMA_MAX) if steps == 1
                                               else MU, abs=0.02)
    assert float(jnp.std(x)) == pytest.approx(math.hypot(S, SIGMA_MIN), abs=0.02)


def test_named_levels_replace_the_even_spacing_for_their_number_of_steps_only():
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 17, RHO)
    levels = consistency.parse_levels("0, 11", 17)
    assert levels == (0, 11)
    np.testing.assert_array_equal(consistency.sampling_sigmas(grid, 2, levels),
                                  grid[jnp.asarray([17, 6])])
    # Other step counts keep the evenly spaced levels (2 steps by default: level 9 of 17).
    np.testing.assert_array_equal(consistency.sampling_sigmas(grid, 4, levels),
                                  consistency.sampling_sigmas(grid, 4))
    np.testing.assert_array_equal(consistency.sampling_sigmas(grid, 2),
                                  grid[jnp.asarray([17, 8])])
    assert consistency.parse_levels("", 17) == ()


@pytest.mark.parametrize("text, message", [
    ("1,5", "must start at 0 (sigma_max) and increase"),
    ("0,5,5", "must start at 0 (sigma_max) and increase"),
    ("0,17", "must stay below 17 (sigma_min"),
    ("0;5", "is not comma-separated whole numbers"),
])
def test_levels_that_do_not_descend_from_sigma_max_are_refused(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        consistency.parse_levels(text, 17)


def test_more_sampling_steps_than_intervals_are_refused():
    grid = consistency.karras_grid(SIGMA_MIN, SIGMA_MAX, 17, RHO)
    with pytest.raises(ValueError, match=r"steps must lie in \[1, 17\], got 18"):
        consistency.sampling_sigmas(grid, 18)
