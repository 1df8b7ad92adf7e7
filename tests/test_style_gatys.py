"""Gatys style transfer on a tiny random CNN and 32x32 images: both optimisers lower the
style loss, the init options, luminance-only transfer, multi-scale, the errors."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from errors import UserError
from style import color, gatys

LAYERS = ("c1", "c2", "c3")
_RNG = np.random.default_rng(0)
_KERNELS = [
    jnp.asarray(_RNG.standard_normal(s) * np.sqrt(2 / np.prod(s[:3])), jnp.float32)
    for s in ((3, 3, 3, 16), (3, 3, 16, 32), (3, 3, 32, 32))
]


def tiny_cnn(x: jax.Array) -> dict[str, jax.Array]:
    """Three 3x3 convolutions with ReLU, average pooling after the first two."""
    out = {}
    for i, kernel in enumerate(_KERNELS):
        x = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        out[LAYERS[i]] = x
        x = jax.nn.relu(x)
        if i < 2:
            x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 2, 2, 1), (1, 2, 2, 1), "VALID") / 4
    return out


def _smooth(seed: int, shape=(32, 32)) -> np.ndarray:
    """A random image with some structure (a blurred noise field), float32 in [0, 1]."""
    noise = np.random.default_rng(seed).uniform(size=(shape[0] // 4, shape[1] // 4, 3))
    return np.clip(np.kron(noise, np.ones((4, 4, 1))), 0, 1).astype(np.float32)


CONTENT = _smooth(1)
STYLE = np.random.default_rng(2).uniform(size=(40, 40, 3)).astype(np.float32)  # fine texture


def _options(**kw) -> gatys.GatysOptions:
    base = dict(content_layers=("c2",), style_layers=LAYERS, optimizer="adam", steps=0)
    return gatys.GatysOptions(**(base | kw))


def _run(content=CONTENT, style=STYLE, **kw) -> gatys.StyleResult:
    return gatys.style_transfer(content, style, tiny_cnn, LAYERS, _options(**kw))


@pytest.mark.parametrize("optimizer, factor", [("lbfgs", 1000), ("adam", 50)])
def test_style_loss_falls_a_lot(optimizer, factor):
    calls = []
    result = gatys.style_transfer(
        CONTENT,
        STYLE,
        tiny_cnn,
        LAYERS,
        _options(optimizer=optimizer, steps=50),
        callback=lambda step, losses: calls.append((step, losses)),
    )
    steps = [r.step for r in result.history]
    assert steps == [0, 10, 20, 30, 40, 50] and [c[0] for c in calls] == steps
    assert set(calls[0][1]) == {"total", "content", "style", "tv"}
    first, last = result.history[0], result.history[-1]
    assert first.content < 1e-5  # starts at the content image
    assert first.style / last.style > factor, (first.style, last.style)
    assert last.total < first.total and 0 < last.content < 1
    assert result.image.shape == (32, 32, 3) and result.image.dtype == np.float32
    assert 0.0 <= result.image.min() and result.image.max() <= 1.0
    assert result.sizes == [(32, 32)]


def test_inits():
    content = _run(init="content").image
    np.testing.assert_allclose(content, CONTENT, atol=1.1e-3)  # the init margin
    style = _run(init="style").image
    want = jax.image.resize(STYLE, (32, 32, 3), "linear")
    np.testing.assert_allclose(style, np.clip(want, 1e-3, 1 - 1e-3), atol=1e-5)
    noise = _run(init="noise", seed=3)
    assert noise.history[0].content > 0.1
    np.testing.assert_array_equal(noise.image, _run(init="noise", seed=3).image)
    assert not np.allclose(noise.image, _run(init="noise", seed=4).image)


def test_parametrisation_round_trip_and_strength():
    x = jnp.linspace(0.0, 1.0, 11)
    np.testing.assert_allclose(gatys.to_pixels(gatys.from_pixels(x)), x, atol=1.1e-3)
    plain = _run().history[0]
    strong = _run(strength=3.0).history[0]
    assert strong.total == pytest.approx(3 * plain.total, rel=1e-5)  # content term is 0


def test_preserve_color_keeps_the_content_chroma():
    result = _run(preserve_color=True, steps=10)
    got, want = color.rgb_to_yiq(result.image), color.rgb_to_yiq(CONTENT)
    np.testing.assert_allclose(got[..., 1:], want[..., 1:], atol=2e-6)
    assert np.abs(np.asarray(got[..., 0] - want[..., 0])).max() > 0.01  # Y did change


def test_multi_scale_ends_at_the_last_scale():
    content = _smooth(5, shape=(64, 96))
    result = _run(content=content, scales=(16, 32), steps=4, log_every=2)
    assert result.image.shape == (32, 48, 3)
    assert result.sizes == [(16, 24), (32, 48)]
    assert [r.step for r in result.history] == [0, 2, 4, 4, 6, 8]
    # The finer scale starts from the coarse result: far closer to it than to noise.
    assert result.history[3].style < 0.5 * result.history[0].style


def test_unknown_layer_and_bad_options():
    with pytest.raises(UserError) as info:
        _run(style_layers=("c1", "conv9"))
    assert (
        str(info.value) == "unknown layer 'conv9' for this feature network; valid names: c1, c2, c3"
    )
    with pytest.raises(UserError, match="the feature function gave no 'c1' \\(it gave c2\\)"):
        gatys.style_transfer(
            CONTENT, STYLE, lambda x: {"c2": tiny_cnn(x)["c2"]}, LAYERS, _options()
        )
    with pytest.raises(UserError) as info:
        gatys.GatysOptions(optimizer="sgd", init="blank", style_layer_weights=(1.0,))
    message = str(info.value)
    assert "\n" not in message and "optimizer" in message and "init" in message
    assert "style_layer_weights has 1 weights for 5 style_layers" in message
    with pytest.raises(UserError, match="scales must increase"):
        gatys.GatysOptions(scales=(64, 32))


def test_default_options_match_the_paper():
    options = gatys.GatysOptions()
    assert options.style_layers == ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    assert options.content_layers == ("conv4_2",)
    assert options.layer_weights == {n: 0.2 for n in options.style_layers}
    assert options.layers == (
        "conv4_2",
        "conv1_1",
        "conv2_1",
        "conv3_1",
        "conv4_1",
        "conv5_1",
    )
