"""Optimizer, warm-up schedule and EMA: score_sde's training recipe."""

import jax.numpy as jnp
import numpy as np
import pytest

from configs.default import get_default_config
from errors import UserError
from training import optim
from training.state import ema_update


def test_learning_rate_warms_up_linearly_then_stays_constant():
    config = get_default_config().optim
    config.lr, config.warmup, config.schedule = 2e-4, 5000, "constant"
    schedule = optim.learning_rate_schedule(config, total_steps=10**6)
    assert float(schedule(0)) == 0.0
    assert float(schedule(2500)) == pytest.approx(1e-4)
    assert float(schedule(5000)) == pytest.approx(2e-4)
    assert float(schedule(10**6)) == pytest.approx(2e-4)


def test_unknown_optimizer_is_named():
    config = get_default_config().optim
    config.optimizer = "Adagrad"
    with pytest.raises(UserError, match=r"optim\.optimizer='Adagrad' is not one of"):
        optim.make_optimizer(config, 100)


def test_cosine_schedule_warms_up_then_decays_to_zero_at_the_last_step():
    config = get_default_config().optim
    config.lr, config.warmup, config.schedule = 1e-3, 100, "cosine"
    schedule = optim.learning_rate_schedule(config, total_steps=1100)
    assert float(schedule(50)) == pytest.approx(5e-4)
    assert float(schedule(100)) == pytest.approx(1e-3)
    assert float(schedule(600)) == pytest.approx(5e-4, rel=1e-4)  # half-way through decay
    assert float(schedule(1100)) == pytest.approx(0.0, abs=1e-9)


def test_bad_schedules_are_named():
    config = get_default_config().optim
    config.schedule = "linear"
    with pytest.raises(UserError, match=r"optim\.schedule='linear' is not one of"):
        optim.make_optimizer(config, 100)
    config.schedule, config.warmup = "cosine", 100
    with pytest.raises(UserError, match=r"n_iters \(50\) > optim.warmup \(100\)"):
        optim.make_optimizer(config, 50)


def test_ema_update_matches_its_formula():
    ema = {"w": jnp.array([1.0, 2.0])}
    params = {"w": jnp.array([3.0, 0.0])}
    out = ema_update(ema, params, 0.9)
    np.testing.assert_allclose(out["w"], [0.9 * 1 + 0.1 * 3, 0.9 * 2 + 0.1 * 0], rtol=1e-6)
