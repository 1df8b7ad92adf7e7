"""Tests for the GAN networks (tiny widths, 8x8 and 32x32) and spectral normalisation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from networks import gan, gan_resnet, layers
from networks.spectral_norm import NetState, SpectralNorm

LATENT = 8
BATCH = 4


def make_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny GAN config; ``image_size``/``num_channels`` go to ``data``, the rest to ``model``."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"image_size": 8, "num_channels": 1})
    config.model = ml_collections.ConfigDict(
        {"name": "dcgan", "latent_dim": LATENT, "nf": 8, "d_nf": 8, "spectral_norm": False,
         "num_classes": 0}
    )  # fmt: skip
    for key, value in overrides.items():
        section = config.data if key in ("image_size", "num_channels") else config.model
        section[key] = value
    return config


def jitted(model: nnx.Module):
    """``model`` as the trainer runs it: state split out, merged inside ``jax.jit``."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def apply(state, x, class_labels):
        return nnx.merge(graphdef, state)(x, class_labels=class_labels)

    return lambda x, class_labels=None: apply(state, x, class_labels)


def latents(batch: int = BATCH) -> jax.Array:
    return jax.random.normal(jax.random.key(7), (batch, LATENT))


@pytest.mark.parametrize("num_classes", [0, 3])
@pytest.mark.parametrize("size,channels", [(8, 1), (32, 3)])
@pytest.mark.parametrize("name", sorted(gan.GAN_NETWORKS))
def test_pair_shapes_ranges_and_labels(name, size, channels, num_classes):
    config = make_config(
        name=name, image_size=size, num_channels=channels, num_classes=num_classes,
        spectral_norm=num_classes > 0,
    )  # fmt: skip
    generator, discriminator = gan.from_config(config, nnx.Rngs(0))
    g, d = jitted(generator), jitted(discriminator)
    labels = jnp.array([0, 1, 2, 0]) if num_classes else None

    images = np.asarray(g(latents(), labels))
    assert images.shape == (BATCH, size, size, channels)
    assert np.all(np.abs(images) <= 1.0)
    assert np.abs(images[0] - images[1]).max() > 1e-3  # different z, different images
    logits = np.asarray(d(jnp.asarray(images), labels))
    assert logits.shape == (BATCH,)
    assert np.all(np.isfinite(logits))
    assert np.abs(logits[0] - logits[1]) > 1e-6

    if num_classes:
        other = (labels + 1) % num_classes
        assert np.abs(np.asarray(g(latents(), other)) - images).max() > 1e-3
        assert np.abs(np.asarray(d(jnp.asarray(images), other)) - logits).min() > 1e-6


def test_num_blocks_follow_image_size():
    kwargs = dict(num_channels=3, nf=8, rngs=nnx.Rngs(0))
    assert gan_resnet.ResNetGenerator(latent_dim=LATENT, image_size=32, **kwargs).num_blocks == 3
    assert gan_resnet.ResNetDiscriminator(image_size=32, **kwargs).num_blocks == 4
    assert gan_resnet.ResNetDiscriminator(image_size=8, **kwargs).num_blocks == 2


def param_count(model: nnx.Module) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_convs_per_stage_adds_exactly_one_conv_per_stage():
    """convs_per_stage=2 adds one 3x3 conv (plus G's GroupNorm) per stage to DCGAN's G and
    D at the stage's resolution; the output shapes stay the same."""
    base_g, base_d = gan.from_config(make_config(image_size=16), nnx.Rngs(0))
    g, d = gan.from_config(make_config(image_size=16, convs_per_stage=2), nnx.Rngs(0))
    # 16x16: 2 stages, G widths 16 (8x8) and 8 (16x16), D widths 16 (8x8) and 32 (4x4).
    g_extra = sum(9 * c * c + c + 2 * c for c in (16, 8))
    d_extra = sum(9 * c * c + c for c in (16, 32))
    assert param_count(g) - param_count(base_g) == g_extra
    assert param_count(d) - param_count(base_d) == d_extra
    images = jitted(g)(latents())
    assert images.shape == (BATCH, 16, 16, 1)
    assert jitted(d)(images).shape == (BATCH,)
    with pytest.raises(ValueError, match="convs_per_stage must be at least 1, got 0"):
        gan.from_config(make_config(convs_per_stage=0), nnx.Rngs(0))


def test_checkpoint_layout_of_the_default_dcgan_is_unchanged():
    """Runs trained before convs_per_stage existed restore: no new parameters by default."""
    g, d = gan.from_config(make_config(), nnx.Rngs(0))
    g_paths = {"/".join(map(str, p)) for p, _ in nnx.to_flat_state(nnx.state(g, nnx.Param))}
    assert g_paths == {
        "input/dense/kernel", "input/dense/bias", "norm_in/scale", "norm_in/bias",
        "ups/0/conv/kernel", "ups/0/conv/bias", "norms/0/scale", "norms/0/bias",
        "conv_out/kernel", "conv_out/bias",
    }  # fmt: skip
    assert len(d.convs) == 1


@pytest.mark.parametrize("name", sorted(gan.GAN_NETWORKS))
def test_label_errors(name):
    x = jnp.zeros((2, 8, 8, 1))
    labels = jnp.array([0, 1])
    g, d = gan.from_config(make_config(name=name), nnx.Rngs(0))
    with pytest.raises(ValueError, match="unconditional"):
        g(latents(2), class_labels=labels)
    with pytest.raises(ValueError, match="unconditional"):
        d(x, class_labels=labels)
    g, d = gan.from_config(make_config(name=name, num_classes=2), nnx.Rngs(0))
    with pytest.raises(ValueError, match="class-conditional"):
        g(latents(2))
    with pytest.raises(ValueError, match="class-conditional"):
        d(x)
    with pytest.raises(ValueError, match=r"class_labels must have shape \(2,\)"):
        d(x, class_labels=jnp.array([0, 1, 1]))


@pytest.mark.parametrize("size", [4, 12, 24])
@pytest.mark.parametrize("name", sorted(gan.GAN_NETWORKS))
def test_bad_image_size(name, size):
    with pytest.raises(ValueError, match=f"image_size.*got {size}"):
        gan.from_config(make_config(name=name, image_size=size), nnx.Rngs(0))


def test_unknown_name():
    with pytest.raises(ValueError, match=r"unknown GAN model\.name 'stylegan'"):
        gan.from_config(make_config(name="stylegan"), nnx.Rngs(0))


def test_wrong_input_shapes():
    g, d = gan.from_config(make_config(), nnx.Rngs(0))
    with pytest.raises(ValueError, match="z of shape"):
        g(jnp.zeros((2, LATENT + 1)))
    with pytest.raises(ValueError, match="x of shape"):
        d(jnp.zeros((2, 16, 16, 1)))


# ----------------------------------------------------------------------------------------
# Spectral normalisation

# (layer builder, weight shape, input): every kind of layer SpectralNorm wraps.
SN_LAYERS = {
    "conv3x3": (
        lambda r: layers.Conv3x3(4, 8, impl="matmul", rngs=r),
        (3, 3, 4, 8),
        jax.random.normal(jax.random.key(2), (2, 8, 8, 4)),
    ),
    "conv3x3-xla-stride2": (
        lambda r: layers.Conv3x3(4, 8, stride=2, impl="xla", rngs=r),
        (3, 3, 4, 8),
        jax.random.normal(jax.random.key(2), (2, 8, 8, 4)),
    ),
    "dense": (lambda r: layers.Dense(12, 5, rngs=r), (12, 5), jnp.ones((2, 12))),
    "embed": (lambda r: layers.Embed(5, 12, rngs=r), (5, 12), jnp.array([0, 3, 4])),
}


def _weight_var(layer):
    return layer.table if isinstance(layer, layers.Embed) else layer.kernel


@pytest.mark.parametrize("kind", sorted(SN_LAYERS))
def test_power_iteration_normalises_top_singular_value(kind):
    build, shape, x = SN_LAYERS[kind]
    w = np.random.default_rng(0).normal(size=shape).astype(np.float32) * 3.0
    layer = build(nnx.Rngs(0))
    _weight_var(layer)[...] = jnp.asarray(w)
    sn = SpectralNorm(layer, rngs=nnx.Rngs(1))
    top = np.linalg.svd(w.reshape(-1, shape[-1]), compute_uv=False)[0]
    # A random u underestimates sigma: without the iteration the check below would fail.
    assert top / float(sn.sigma()) - 1.0 > 1e-2

    for _ in range(40):
        sn(x, train=True)
    assert abs(top / float(sn.sigma()) - 1.0) < 1e-2

    # The output is the layer's with W / sigma_max.
    reference = build(nnx.Rngs(0))
    _weight_var(reference)[...] = jnp.asarray(w / top)
    np.testing.assert_allclose(sn(x, train=False), reference(x), rtol=1e-2, atol=1e-3)


def test_eval_mode_keeps_u_and_train_mode_updates_it():
    _, _, x = SN_LAYERS["conv3x3"]
    sn = SpectralNorm(layers.Conv3x3(4, 8, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
    u0 = np.asarray(sn.u[...])
    y0 = sn(x, train=False)
    np.testing.assert_array_equal(sn.u[...], u0)
    np.testing.assert_array_equal(sn(x, train=False), y0)
    sn(x, train=True)
    u1 = np.asarray(sn.u[...])
    assert np.abs(u1 - u0).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(u1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("name,expected", [("dcgan", 4), ("resnet", 7)])
def test_net_state_holds_the_u_vectors(name, expected):
    # 8x8 conditional D. DCGAN: conv_in, one strided conv, head dense, head embedding.
    # ResNet: optimised block (2 convs + 1x1 shortcut), last block (2 convs, identity
    # shortcut), head dense + embedding.
    config = make_config(name=name, num_classes=3, spectral_norm=True)
    _, d = gan.from_config(config, nnx.Rngs(0))
    state = nnx.state(d, NetState)
    leaves = jax.tree.leaves(state)
    assert len(leaves) == expected
    for u in leaves:
        assert u.ndim == 1
        np.testing.assert_allclose(np.linalg.norm(u), 1.0, rtol=1e-5)
    params = nnx.to_flat_state(nnx.state(d, nnx.Param))
    assert not any(path[-1] == "u" for path, _ in params)  # no optimiser ever sees u

    _, plain = gan.from_config(make_config(name=name, num_classes=3), nnx.Rngs(0))
    assert jax.tree.leaves(nnx.state(plain, NetState)) == []


def test_functional_train_step_carries_net_state():
    config = make_config(name="resnet", num_classes=3, spectral_norm=True)
    _, d = gan.from_config(config, nnx.Rngs(0))
    graphdef, params, net_state, rest = nnx.split(d, nnx.Param, NetState, ...)
    x = jax.random.normal(jax.random.key(3), (2, 8, 8, 1))
    labels = jnp.array([0, 2])

    @jax.jit
    def step(params, net_state):
        def loss_fn(params):
            model = nnx.merge(graphdef, params, net_state, rest, copy=True)
            logits = model(x, class_labels=labels, train=True)
            return jnp.mean(jax.nn.softplus(-logits)), nnx.state(model, NetState)

        (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, new_state, grads

    loss, new_state, grads = step(params, net_state)
    assert np.isfinite(loss)
    grad_leaves = jax.tree.leaves(grads)
    assert all(np.all(np.isfinite(g)) for g in grad_leaves)
    assert any(np.abs(g).max() > 0 for g in grad_leaves)
    old, new = jax.tree.leaves(net_state), jax.tree.leaves(new_state)
    assert len(new) == len(old) == 7
    assert max(np.abs(a - b).max() for a, b in zip(old, new, strict=True)) > 1e-4

    # The functional step did what one stateful training call does (nnx.jit: in place).
    nnx.jit(lambda model: model(x, class_labels=labels, train=True))(d)
    for a, b in zip(jax.tree.leaves(nnx.state(d, NetState)), new, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(gan.GAN_NETWORKS))
def test_split_merge_under_jit_matches_eager(name):
    config = make_config(name=name, num_classes=3, spectral_norm=True)
    g, d = gan.from_config(config, nnx.Rngs(0))
    labels = jnp.array([2, 0])
    z = latents(2)
    images = g(z, class_labels=labels)
    np.testing.assert_allclose(jitted(g)(z, labels), images, rtol=1e-5, atol=1e-5)
    logits = d(images, class_labels=labels)
    np.testing.assert_allclose(jitted(d)(images, labels), logits, rtol=1e-5, atol=1e-5)
