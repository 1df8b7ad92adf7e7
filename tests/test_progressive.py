"""Progressive distillation (diffusion/progressive.py): the target construction is exact,
i.e. a student that predicts it samples in N DDIM steps exactly what its teacher samples in
2N from the same noise, and the loss vanishes there (closed-form teacher: the score of
Gaussian data on VP)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffusion import progressive, score, sde_lib

SDE = sde_lib.VPSDE()
TEACHER = score.mixture_score_fn(SDE, [[0.7, -0.4]], [0.5])


def perfect_student(teacher, steps, spacing="uniform"):
    """The score of a student whose x0 prediction at (x, t) is the target of its step on
    the `steps`-step grid: score = (alpha x_tilde - x) / sigma^2."""

    def score_fn(x, t):
        half, end = progressive.step_times(SDE, t, steps, spacing)
        x_tilde = progressive.distillation_target(SDE, teacher, x, t, half, end)
        alpha = SDE.marginal_scale(t)[:, None]
        return (alpha * x_tilde - x) / SDE.marginal_std(t)[:, None] ** 2

    return score_fn


@pytest.mark.parametrize("spacing", ["uniform", "quadratic"])
@pytest.mark.parametrize("steps", [1, 2, 4])
def test_a_student_on_its_targets_samples_in_n_steps_the_teachers_2n_step_samples(
        steps, spacing):
    key, shape = jax.random.PRNGKey(0), (256, 2)
    student = jax.jit(lambda k: progressive.ddim_sample(
        SDE, perfect_student(TEACHER, steps, spacing), k, shape, steps, spacing))(key)
    teacher = jax.jit(lambda k: progressive.ddim_sample(SDE, TEACHER, k, shape, 2 * steps,
                                                        spacing))(key)
    np.testing.assert_allclose(student, teacher, rtol=1e-4, atol=1e-4)
    # ... and not what the teacher draws in N steps itself.
    alone = progressive.ddim_sample(SDE, TEACHER, key, shape, steps, spacing)
    assert float(jnp.max(jnp.abs(alone - teacher))) > 100 * 1e-4


def test_the_quadratic_grid_nests_under_halving_and_crowds_the_end():
    sde = SDE
    grid4, grid8 = (progressive.time_grid(sde, n, "quadratic") for n in (4, 8))
    np.testing.assert_allclose(grid4, [1.0, 0.5625, 0.25, 0.0625, 0.0], atol=1e-7)
    np.testing.assert_allclose(grid8[::2], grid4, atol=1e-7)
    half, end = progressive.step_times(sde, grid4[:-1], 4, "quadratic")
    np.testing.assert_allclose(half, grid8[1::2], atol=1e-6)
    np.testing.assert_allclose(end, grid4[1:], atol=1e-6)


def test_the_loss_vanishes_on_the_targets_and_not_elsewhere():
    x0 = jnp.array([0.7, -0.4]) + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (512, 2))
    key = jax.random.PRNGKey(2)
    for spacing in ("uniform", "quadratic"):
        loss = lambda student, spacing=spacing: float(jax.jit(
            lambda x: progressive.distillation_loss(SDE, student, TEACHER, key, x, 4,
                                                    spacing))(x0))
        assert loss(perfect_student(TEACHER, 4, spacing)) < 1e-8
        assert loss(TEACHER) > 1e-4  # the teacher's own one step is not its two


def test_many_ddim_steps_of_the_exact_score_draw_the_gaussian():
    x = progressive.ddim_sample(SDE, TEACHER, jax.random.PRNGKey(3), (20_000, 2), 64)
    np.testing.assert_allclose(jnp.mean(x, axis=0), [0.7, -0.4], atol=0.02)
    np.testing.assert_allclose(jnp.std(x, axis=0), [0.5, 0.5], atol=0.02)


def test_powers_of_two():
    assert [n for n in range(10) if progressive.is_power_of_two(n)] == [1, 2, 4, 8]
