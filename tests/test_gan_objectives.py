"""GAN objectives: adversarial losses, gradient penalties, DiffAugment, generator EMA."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gan import augment, ema, losses, penalties

REAL = np.array([1.0, -2.0, 0.5], np.float32)
FAKE = np.array([0.5, 3.0, -1.5], np.float32)


def _softplus(v):
    return np.log1p(np.exp(v))


# ----------------------------------------------------------------------------- losses.py


@pytest.mark.parametrize(
    "name, d_expected, g_expected",
    [
        ("ns", np.mean(_softplus(-REAL) + _softplus(FAKE)), np.mean(_softplus(-FAKE))),
        (
            "hinge",
            np.mean(np.maximum(0, 1 - REAL) + np.maximum(0, 1 + FAKE)),
            -np.mean(FAKE),
        ),
        ("relativistic", np.mean(_softplus(FAKE - REAL)), np.mean(_softplus(REAL - FAKE))),
    ],
)
def test_losses_at_known_logits(name, d_expected, g_expected):
    d_loss, g_loss = losses.get_gan_loss(name)
    np.testing.assert_allclose(d_loss(REAL, FAKE), d_expected, rtol=1e-6)
    np.testing.assert_allclose(g_loss(REAL, FAKE), g_expected, rtol=1e-6)
    # Hand values of the first example alone, for readers who do not trust the formulas.
    one = {
        "ns": (_softplus(-1.0) + _softplus(0.5), _softplus(-0.5)),
        "hinge": (0.0 + 1.5, -0.5),
        "relativistic": (_softplus(-0.5), _softplus(0.5)),
    }[name]
    np.testing.assert_allclose(d_loss(REAL[:1], FAKE[:1]), one[0], rtol=1e-6)
    np.testing.assert_allclose(g_loss(REAL[:1], FAKE[:1]), one[1], rtol=1e-6)


@pytest.mark.parametrize("name", sorted(losses.LOSSES))
def test_loss_gradients_point_the_right_way(name):
    d_loss, g_loss = losses.LOSSES[name]
    # Inside the hinge margins, so every loss has a gradient.
    real, fake = jnp.array([0.2, -0.3]), jnp.array([-0.1, 0.4])
    d_real, d_fake = jax.grad(d_loss, argnums=(0, 1))(real, fake)
    g_fake = jax.grad(g_loss, argnums=1)(real, fake)
    # Descent raises real logits and lowers fake ones for D, raises fake ones for G.
    assert np.all(d_real < 0) and np.all(d_fake > 0)
    assert np.all(g_fake < 0)


def test_unknown_loss():
    with pytest.raises(ValueError, match=r"unknown GAN loss 'wgan'.*hinge"):
        losses.get_gan_loss("wgan")


# -------------------------------------------------------------------------- penalties.py


def test_r1_linear_discriminator_is_squared_weight_norm():
    w = jax.random.normal(jax.random.key(0), (4, 4, 3))
    x = jax.random.normal(jax.random.key(1), (5, 4, 4, 3))

    def d_fn(v):
        return jnp.sum(v * w, axis=(1, 2, 3)) + 0.7

    both = jax.jit(lambda x: (penalties.r1_penalty(d_fn, x), penalties.r2_penalty(d_fn, -x)))
    np.testing.assert_allclose(both(x), [jnp.sum(w**2)] * 2, rtol=1e-5)


def test_r1_quadratic_discriminator_and_parameter_gradient():
    x = jax.random.normal(jax.random.key(2), (6, 3))
    expected = np.mean(4 * np.sum(np.asarray(x) ** 2, axis=1))
    # D = a ||x||^2: R1 = 4 a^2 mean ||x||^2, so d/da through the double backward pass is
    # 8 a mean ||x||^2; and no gradient flows into the data (the generator, for R2).
    penalty = lambda a, v: penalties.r2_penalty(lambda u: a * jnp.sum(u**2, axis=1), v)
    value, (grad_a, grad_x) = jax.jit(jax.value_and_grad(penalty, argnums=(0, 1)))(1.0, x)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    np.testing.assert_allclose(grad_a, 2 * expected, rtol=1e-5)
    np.testing.assert_array_equal(grad_x, 0.0)
    np.testing.assert_allclose(
        penalties.r1_penalty(lambda v: jnp.sum(v**2, axis=1), x), expected, rtol=1e-5
    )


def test_lazy_penalty_under_jit():
    w = jnp.array([1.0, -2.0])

    def penalty(w, step):
        d_fn = lambda v: v @ w
        return penalties.lazy_penalty(step, 4, lambda: penalties.r1_penalty(d_fn, jnp.ones((3, 2))))

    value_and_grad = jax.jit(jax.value_and_grad(penalty))
    for step in range(9):
        value, grad = value_and_grad(w, jnp.int32(step))
        on = step % 4 == 0
        np.testing.assert_allclose(value, 4 * 5.0 if on else 0.0, rtol=1e-6)
        np.testing.assert_allclose(grad, 4 * 2 * w if on else 0.0, rtol=1e-6)
    # A real branch: off steps do not evaluate the penalty.
    assert "cond" in str(jax.make_jaxpr(penalty)(w, jnp.int32(1)))
    every = penalties.lazy_penalty(jnp.int32(3), 1, lambda: jnp.float32(2.5))
    np.testing.assert_allclose(every, 2.5)
    for bad in (0, -2):
        with pytest.raises(ValueError, match="interval must be a positive integer"):
            penalties.lazy_penalty(0, bad, lambda: jnp.float32(1.0))


# ---------------------------------------------------------------------------- augment.py

POLICIES = ["color", "translation", "cutout", "color,translation,cutout"]


def test_empty_policy_is_identity_and_parse():
    x = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3), minval=-1, maxval=1)
    np.testing.assert_array_equal(augment.diff_augment(jax.random.key(1), x, ""), x)
    assert augment.parse_policy("") == ()
    assert augment.parse_policy("color, cutout") == ("color", "cutout")


@pytest.mark.parametrize("policy", POLICIES)
def test_policy_shapes_keys_and_gradient(policy):
    x = jax.random.uniform(jax.random.key(0), (3, 16, 16, 3), minval=-1, maxval=1)
    weights = jax.random.normal(jax.random.key(1), x.shape)

    @jax.jit
    def run(key, x):
        out = augment.diff_augment(key, x, policy)
        return out, jax.grad(lambda v: jnp.sum(augment.diff_augment(key, v, policy) * weights))(x)

    out_a, grad = run(jax.random.key(2), x)
    out_b, _ = run(jax.random.key(3), x)
    assert out_a.shape == x.shape and out_a.dtype == x.dtype
    assert not np.allclose(out_a, out_b)
    assert np.all(np.isfinite(grad)) and np.any(grad != 0)


def test_translation_moves_a_pixel_by_an_integer_offset():
    size, batch = 16, 32
    x = jnp.zeros((batch, size, size, 1)).at[:, 8, 8, 0].set(1.0)
    translate = jax.jit(lambda key, x: augment.diff_augment(key, x, "translation"))
    out = np.asarray(translate(jax.random.key(4), x))
    offsets = set()
    for image in out[..., 0]:
        assert np.count_nonzero(image) == 1 and image.max() == 1.0
        ((row, col),) = np.argwhere(image == 1.0)
        assert abs(row - 8) <= size // 8 and abs(col - 8) <= size // 8
        offsets.add((row - 8, col - 8))
    assert len(offsets) > 5
    # Zero padding: a corner pixel shifted off the image leaves nothing behind.
    corner = np.asarray(
        translate(jax.random.key(5), jnp.zeros((batch, size, size, 1)).at[:, 0, 0, 0].set(1.0))
    )
    assert set(np.unique(corner)) <= {0.0, 1.0} and 0 < corner.sum() < batch


def test_cutout_zeros_a_half_size_square():
    x = jnp.ones((8, 16, 12, 2))
    out = np.asarray(augment.diff_augment(jax.random.key(6), x, "cutout"))
    corners = set()
    for image in out:
        rows, cols, _ = np.nonzero(image == 0)
        assert len(rows) == 8 * 6 * 2
        assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == (8, 6)
        corners.add((rows.min(), cols.min()))
    assert len(corners) > 1


def test_color_on_flat_gray_is_a_per_example_brightness_shift():
    x = jnp.full((16, 4, 4, 3), 0.2)
    out = np.asarray(augment.diff_augment(jax.random.key(7), x, "color"))
    shift = out - 0.2
    # Saturation and contrast leave a flat gray image alone; brightness moves it.
    np.testing.assert_allclose(shift, shift[:, :1, :1, :1] * np.ones_like(shift), atol=1e-6)
    assert np.all(np.abs(shift) <= 0.5) and np.std(shift[:, 0, 0, 0]) > 0.1


def test_unknown_policy():
    with pytest.raises(ValueError, match=r"'flip'.*color"):
        augment.parse_policy("color,flip")
    with pytest.raises(ValueError, match="'flip'"):
        augment.diff_augment(jax.random.key(0), jnp.zeros((1, 8, 8, 1)), "flip")


# -------------------------------------------------------------------------------- ema.py


def test_ema_beta_formula_and_half_life():
    np.testing.assert_allclose(ema.ema_beta(32, 10_000), 0.5 ** (32 / 10_000), rtol=1e-6)
    # After half_life images of updates towards a constant, the EMA has moved halfway.
    batch, half_life = 8, 64
    beta = ema.ema_beta(batch, half_life)
    average = {"w": jnp.zeros(3), "count": jnp.int32(0)}
    for _ in range(half_life // batch):
        average = ema.ema_update(average, {"w": jnp.ones(3), "count": jnp.int32(7)}, beta)
    np.testing.assert_allclose(average["w"], 0.5, rtol=1e-5)
    assert average["count"] == 7  # integer leaves are copied, not averaged


def test_ema_rampup_and_zero_half_life():
    # min(1000, 10 * 8 * 0.05 = 4) images: 0.5 ** (8 / 4).
    np.testing.assert_allclose(ema.ema_beta(8, 1000, step=10, rampup=0.05), 0.25, rtol=1e-6)
    np.testing.assert_allclose(
        ema.ema_beta(8, 1000, step=10**6, rampup=0.05), 0.5 ** (8 / 1000), rtol=1e-6
    )
    traced = jax.jit(lambda s: ema.ema_beta(8, 1000, step=s, rampup=0.05))
    np.testing.assert_allclose(traced(jnp.int32(10)), 0.25, rtol=1e-6)
    assert float(ema.ema_beta(8, 1000, step=0, rampup=0.05)) == 0.0
    assert float(ema.ema_beta(8, 0)) == 0.0
    np.testing.assert_array_equal(ema.ema_update(jnp.zeros(2), jnp.ones(2), 0.0), 1.0)


def test_ema_errors():
    with pytest.raises(ValueError, match="half_life_images must be non-negative"):
        ema.ema_beta(8, -1)
    with pytest.raises(ValueError, match="rampup must be non-negative"):
        ema.ema_beta(8, 10, step=1, rampup=-0.1)
    with pytest.raises(ValueError, match="needs the current step"):
        ema.ema_beta(8, 10, rampup=0.05)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        ema.ema_beta(0, 10)
