"""Style transfer's losses and colour maths: Gram matrices of known arrays, zero losses
where they must be zero, relative scaling, and YIQ round trips."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from style import color, losses


def test_gram_of_known_arrays():
    # One image, 2x1 pixels, 2 channels: pixel values (1, 2) and (3, 4).
    f = jnp.asarray([[[[1.0, 2.0]], [[3.0, 4.0]]]])
    want = np.array([[1 * 1 + 3 * 3, 1 * 2 + 3 * 4], [2 * 1 + 4 * 3, 2 * 2 + 4 * 4]]) / (2 * 2 * 1)
    np.testing.assert_allclose(losses.gram(f), want[None], rtol=1e-6)


def test_gram_is_batched_symmetric_and_size_independent():
    rng = np.random.default_rng(0)
    f = jnp.asarray(rng.standard_normal((3, 4, 5, 6)), jnp.float32)
    g = losses.gram(f)
    assert g.shape == (3, 6, 6)
    np.testing.assert_allclose(g, jnp.swapaxes(g, 1, 2), rtol=1e-6)
    np.testing.assert_allclose(g[1], losses.gram(f[1:2])[0], rtol=1e-6)
    tiled = jnp.tile(f, (1, 2, 3, 1))  # the same statistics on 6x the pixels
    np.testing.assert_allclose(losses.gram(tiled), g, rtol=1e-5)
    with pytest.raises(ValueError, match="N, H, W, C"):
        losses.gram(f[0])


def test_content_loss_zero_at_identity_and_relative():
    rng = np.random.default_rng(1)
    p = jnp.asarray(rng.standard_normal((1, 4, 4, 8)), jnp.float32)
    assert float(losses.content_loss(p, p)) == 0.0
    np.testing.assert_allclose(losses.content_loss(jnp.zeros_like(p), p), 1.0, rtol=1e-6)
    # Scaling features and target together (another network's scale) changes nothing.
    noisy = p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), jnp.float32)
    np.testing.assert_allclose(
        losses.content_loss(60 * noisy, 60 * p), losses.content_loss(noisy, p), rtol=1e-5
    )


def test_style_loss_weights_layers_and_is_zero_at_the_target():
    rng = np.random.default_rng(2)
    feats = {n: jnp.asarray(rng.standard_normal((1, 6, 6, 4)), jnp.float32) for n in "ab"}
    grams = {n: losses.gram(f)[0] for n, f in feats.items()}
    assert float(losses.style_loss(feats, grams, {"a": 1.0, "b": 2.0})) == pytest.approx(0.0)
    other = {n: f[:, ::-1] * 1.5 + 0.3 for n, f in feats.items()}
    a = float(losses.style_loss(other, grams, {"a": 1.0}))
    b = float(losses.style_loss(other, grams, {"b": 1.0}))
    assert a > 0 and b > 0
    both = float(losses.style_loss(other, grams, {"a": 0.5, "b": 2.0}))
    assert both == pytest.approx(0.5 * a + 2.0 * b, rel=1e-5)
    # A layer the weights leave out is not read at all.
    assert float(losses.style_loss({"a": other["a"]}, grams, {"a": 1.0})) == pytest.approx(a)


def test_total_variation():
    assert float(losses.total_variation(jnp.full((2, 5, 7, 3), 0.4))) == 0.0
    stripes = jnp.zeros((1, 4, 4, 1)).at[:, :, 1::2].set(1.0)  # vertical stripes
    # Horizontal neighbours always differ by 1, vertical ones never.
    assert float(losses.total_variation(stripes)) == pytest.approx(1.0)


def test_yiq_round_trip_and_grey_has_no_chroma():
    rng = np.random.default_rng(3)
    rgb = jnp.asarray(rng.uniform(size=(5, 6, 3)), jnp.float32)
    np.testing.assert_allclose(color.yiq_to_rgb(color.rgb_to_yiq(rgb)), rgb, atol=1e-6)
    grey = color.grey_rgb(jnp.linspace(0, 1, 7))
    np.testing.assert_allclose(color.rgb_to_yiq(grey)[..., 1:], 0.0, atol=1e-6)
    np.testing.assert_allclose(color.luminance(grey), jnp.linspace(0, 1, 7), atol=1e-6)
    np.testing.assert_allclose(color.YIQ_TO_RGB[:, 0], 1.0, atol=1e-12)


def test_recombine_keeps_chroma_and_stays_in_gamut():
    rng = np.random.default_rng(4)
    content = jnp.asarray(rng.uniform(size=(8, 8, 3)), jnp.float32)
    y = jnp.asarray(rng.uniform(-0.2, 1.2, size=(8, 8)), jnp.float32)  # some out of reach
    out = color.recombine(content, y)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    np.testing.assert_allclose(
        color.rgb_to_yiq(out)[..., 1:], color.rgb_to_yiq(content)[..., 1:], atol=2e-6
    )
    # Where y was reachable it is kept.
    reachable = color.luminance(color.recombine(content, color.luminance(content)))
    np.testing.assert_allclose(reachable, color.luminance(content), atol=2e-6)


def test_match_luminance_moments():
    rng = np.random.default_rng(5)
    y = jnp.asarray(rng.uniform(0.0, 0.3, size=(16, 16)), jnp.float32)
    ref = jnp.asarray(rng.uniform(0.3, 0.7, size=(16, 16)), jnp.float32)
    out = color.match_luminance(y, ref)
    assert float(jnp.mean(out)) == pytest.approx(float(jnp.mean(ref)), abs=1e-4)
    assert float(jnp.std(out)) == pytest.approx(float(jnp.std(ref)), rel=1e-3)
