"""Tests for the VAE encoder/decoder (nf 8, one res block per level, 8x8 and 32x32)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from networks import vae

LATENT_CHANNELS = 4


def make_config(image_size: int, num_channels: int, ch_mult) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict(
        {"image_size": image_size, "num_channels": num_channels}
    )
    config.model = ml_collections.ConfigDict(
        {"nf": 8, "ch_mult": ch_mult, "num_res_blocks": 1, "latent_channels": LATENT_CHANNELS}
    )
    return config


def jitted(model: nnx.Module):
    graphdef, state = nnx.split(model)
    apply = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x))
    return lambda x: apply(state, x)


@pytest.mark.parametrize("params_per_channel", [1, 2])
@pytest.mark.parametrize("size,channels,ch_mult,latent", [(8, 1, (1, 2), 4), (32, 3, (1, 2, 2), 8)])
def test_shapes(size, channels, ch_mult, latent, params_per_channel):
    config = make_config(size, channels, ch_mult)
    encoder, decoder = vae.from_config(config, params_per_channel, nnx.Rngs(0))
    x = jax.random.uniform(jax.random.key(1), (2, size, size, channels), minval=-1, maxval=1)

    mean, logvar = jitted(encoder)(x)
    assert mean.shape == logvar.shape == (2, latent, latent, LATENT_CHANNELS)
    assert np.abs(np.asarray(mean[0] - mean[1])).max() > 1e-4  # depends on the input
    low, high = vae.LOGVAR_RANGE
    assert np.all((low <= np.asarray(logvar)) & (np.asarray(logvar) <= high))

    out = np.asarray(jitted(decoder)(mean))
    assert out.shape == (2, size, size, channels * params_per_channel)
    assert np.all(np.isfinite(out))
    assert np.abs(out[0] - out[1]).max() > 1e-4


def test_logvar_is_clipped_and_mean_is_not():
    encoder, _ = vae.from_config(make_config(8, 1, (1, 2)), 1, nnx.Rngs(0))
    x = jnp.zeros((2, 8, 8, 1))
    # Drive the head's output far out through its bias: channels are means, then logvars.
    bias = encoder.head.conv.bias
    low, high = vae.LOGVAR_RANGE

    bias[...] = jnp.full((2 * LATENT_CHANNELS,), 1000.0)
    mean, logvar = jitted(encoder)(x)
    np.testing.assert_array_equal(logvar, high)
    assert float(mean.min()) > 500.0

    bias[...] = jnp.full((2 * LATENT_CHANNELS,), -1000.0)
    mean, logvar = jitted(encoder)(x)
    np.testing.assert_array_equal(logvar, low)
    assert float(mean.max()) < -500.0


@pytest.mark.parametrize("size,ch_mult", [(10, (1, 2, 2)), (12, (1, 2, 2, 2))])
def test_bad_image_size(size, ch_mult):
    with pytest.raises(ValueError, match=f"image_size {size} is not divisible"):
        vae.from_config(make_config(size, 1, ch_mult), 1, nnx.Rngs(0))


def test_wrong_input_shapes():
    encoder, decoder = vae.from_config(make_config(8, 1, (1, 2)), 2, nnx.Rngs(0))
    with pytest.raises(ValueError, match="x of shape"):
        encoder(jnp.zeros((2, 8, 8, 3)))
    with pytest.raises(ValueError, match="z of shape"):
        decoder(jnp.zeros((2, 8, 8, LATENT_CHANNELS)))
