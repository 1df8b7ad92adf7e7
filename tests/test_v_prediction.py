"""v-prediction (diffusion/v_prediction.py, the 'v' preconditioning and the 'v_prediction'
objective) against closed forms: v = alpha z - sigma x0 converts exactly to the data, the
noise and the score, and on Gaussian data the loss at the optimal v is known."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import losses, score, sde_lib, v_prediction

MEAN = np.array([1.0, -2.0], np.float32)
STD = 0.5
SDES = [sde_lib.VPSDE(), sde_lib.subVPSDE()]
IDS = ["vp", "subvp"]


@pytest.mark.parametrize("sde", SDES, ids=IDS)
def test_v_converts_to_the_data_noise_and_score_it_stands_for(sde):
    k0, k1 = jax.random.split(jax.random.PRNGKey(0))
    x0 = jax.random.normal(k0, (5, 3))
    z = jax.random.normal(k1, (5, 3))
    t = jnp.array([0.01, 0.2, 0.5, 0.8, 1.0])
    alpha, sigma = sde.marginal_scale(t)[:, None], sde.marginal_std(t)[:, None]
    x, v = alpha * x0 + sigma * z, alpha * z - sigma * x0
    np.testing.assert_allclose(v_prediction.x0_from_v(sde, v, x, t), x0, atol=2e-5)
    np.testing.assert_allclose(v_prediction.eps_from_v(sde, v, x, t), z, atol=2e-5)
    np.testing.assert_allclose(v_prediction.score_from_v(sde, v, x, t), -z / sigma,
                               rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(v_prediction.v_from_score(sde, -z / sigma, x, t), v,
                               rtol=1e-4, atol=1e-4)


def test_a_v_network_is_read_as_the_score_of_its_v():
    sde = sde_lib.VPSDE()
    x0, z = jnp.array([[0.3, -1.0]]), jnp.array([[1.2, 0.4]])
    t = jnp.array([0.4])
    alpha, sigma = float(sde.marginal_scale(t)[0]), float(sde.marginal_std(t)[0])
    net_fn = lambda x, c_noise: alpha * z - sigma * x0
    score_fn = score.get_score_fn(sde, net_fn, preconditioning="v")
    np.testing.assert_allclose(score_fn(alpha * x0 + sigma * z, t), -z / sigma, rtol=1e-5)


def test_v_loss_at_the_optimum_is_the_conditional_variance_of_v():
    sde, eps = sde_lib.VPSDE(), 1e-3
    loss_fn = losses.get_loss_fn(sde, objective="v_prediction", reduce_mean=False, eps=eps)
    optimal = score.mixture_score_fn(sde, MEAN[None], [STD])
    x = jnp.asarray(MEAN) + STD * jax.random.normal(jax.random.PRNGKey(1), (40_000, 2))
    key = jax.random.PRNGKey(2)
    loss = float(jax.jit(lambda x: loss_fn(optimal, key, x))(x))
    # Var(v | x_t) per value = (alpha^2 + sigma^2)^2 std^2 / (alpha^2 std^2 + sigma^2).
    t = np.linspace(eps, sde.T, 20_001)
    alpha, sigma = np.asarray(sde.marginal_scale(t)), np.asarray(sde.marginal_std(t))
    var = 2 * (alpha**2 + sigma**2) ** 2 * STD**2 / (alpha**2 * STD**2 + sigma**2)
    assert loss == pytest.approx(float(np.trapezoid(var, t) / (sde.T - eps)), rel=0.03)
    biased = lambda x, t: optimal(x, t) + 0.1
    assert float(loss_fn(biased, key, x)) > loss


def test_v_prediction_is_continuous_time_only():
    with pytest.raises(ValueError, match="v_prediction"):
        losses.get_loss_fn(sde_lib.VPSDE(), objective="v_prediction", continuous=False)
