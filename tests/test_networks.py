"""Tests for the network zoo: tiny U-Nets (nf 8, ch_mult (1, 2), 1 res block) and the MLP."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import networks
from networks import layers, resample


def make_config(**overrides) -> ml_collections.ConfigDict:
    """A tiny DDPM++ config; keys ``image_size``/``num_channels``/``dim`` go to ``data``."""
    config = ml_collections.ConfigDict()
    config.data = ml_collections.ConfigDict({"image_size": 8, "num_channels": 1})
    config.model = ml_collections.ConfigDict(
        {
            "name": "ddpmpp", "nf": 8, "ch_mult": (1, 2), "num_res_blocks": 1,
            "attn_resolutions": (4,), "dropout": 0.1, "resamp_with_conv": True,
            "skip_rescale": True, "resblock_type": "biggan", "embedding_type": "positional",
            "fourier_scale": 16.0, "init_scale": 0.0, "conv_impl": "auto", "num_classes": 0,
            "hidden": 16, "num_layers": 2,
        }
    )  # fmt: skip
    for key, value in overrides.items():
        section = config.data if key in ("image_size", "num_channels", "dim") else config.model
        section[key] = value
    return config


# Tests compare numbers, not speed: XLA:CPU's backend optimisations double compile time.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


def jitted(model: nnx.Module):
    """The trainer's pattern: params as a pytree, merged inside jit. -> f(params, x, c, ...)."""
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="train", compiler_options=FAST_COMPILE)
    def apply(params, x, c_noise, key=None, class_labels=None, train=False):
        net = nnx.merge(graphdef, params)
        return net(x, c_noise, train=train, key=key, class_labels=class_labels)

    return params, apply


def _inputs(size: int, channels: int = 1, batch: int = 2):
    x = jax.random.normal(jax.random.key(1), (batch, size, size, channels))
    return x, jnp.linspace(1.0, 900.0, batch)


# The base model: DDPM++ with BigGAN blocks and attention at 4x4 on 8x8 input, dropout on.
BASE = dict(dropout=0.5, init_scale=1.0)  # init_scale 1: outputs far from 0, comparisons bite

UNET_VARIANTS = {
    "ddpmpp-16-ddpm-blocks-fourier": dict(
        image_size=16, attn_resolutions=(), resblock_type="ddpm", embedding_type="fourier"
    ),
    "ncsnpp-8-fir-skip-attn": dict(
        name="ncsnpp", fir=True, fir_kernel=(1, 3, 3, 1), progressive="output_skip",
        progressive_input="input_skip", embedding_type="fourier", num_channels=3,
    ),
    "ncsnpp-16-fir-residual-attn16": dict(
        name="ncsnpp", image_size=16, attn_resolutions=(16,), fir=True, resblock_type="ddpm",
        progressive="residual", progressive_input="residual", resamp_with_conv=False,
    ),
}  # fmt: skip


@pytest.fixture(scope="module")
def base():
    """(model, params, apply) of the base config; apply's compilations are shared by tests."""
    model = networks.get_model(make_config(**BASE), nnx.Rngs(0))
    return (model, *jitted(model))


def test_base_unet_output_shape(base):
    _, params, apply = base
    x, c = _inputs(8)
    y = apply(params, x, c, jax.random.key(0))
    assert y.shape == x.shape
    assert np.all(np.isfinite(np.asarray(y)))


@pytest.mark.parametrize("variant", list(UNET_VARIANTS))
def test_unet_variant_output_shape(variant):
    config = make_config(**UNET_VARIANTS[variant])
    params, apply = jitted(networks.get_model(config, nnx.Rngs(0)))
    x, c = _inputs(config.data.image_size, config.data.num_channels)
    y = apply(params, x, c)
    assert y.shape == x.shape
    assert np.all(np.isfinite(np.asarray(y)))


@functools.partial(jax.jit, compiler_options=FAST_COMPILE)
def _call(layer: nnx.Module, x: jax.Array) -> jax.Array:
    return layer(x)  # NNX modules are pytrees: they pass straight through jax.jit


def test_conv_impls_agree_layerwise():
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 5))
    for stride in (1, 2):
        conv_x = layers.Conv3x3(5, 7, stride=stride, impl="xla", rngs=nnx.Rngs(3))
        conv_m = layers.Conv3x3(5, 7, stride=stride, impl="matmul", rngs=nnx.Rngs(3))
        conv_m.bias[...] = jnp.arange(7.0)  # a non-zero bias must be handled identically
        conv_x.bias[...] = jnp.arange(7.0)
        y = _call(conv_m, x)
        np.testing.assert_allclose(_call(conv_x, x), y, atol=1e-5, rtol=1e-5)
        assert y.shape == (2, 8 // stride, 8 // stride, 7)
    nin_x = layers.Conv1x1(5, 4, impl="xla", rngs=nnx.Rngs(4))
    nin_m = layers.Conv1x1(5, 4, impl="matmul", rngs=nnx.Rngs(4))
    np.testing.assert_allclose(_call(nin_x, x), _call(nin_m, x), atol=1e-5, rtol=1e-5)


def test_conv_impls_agree_in_model(base):
    _, params, apply = base
    x, c = _inputs(8)
    key = jax.random.key(0)
    out = {}
    for impl in ("xla", "matmul"):
        # Same seed -> same parameters, whatever the implementation.
        model = networks.get_model(make_config(conv_impl=impl, **BASE), nnx.Rngs(0))
        p, a = (params, apply) if impl == layers.resolve_conv_impl("auto") else jitted(model)
        out[impl] = a(p, x, c, key)
    assert float(jnp.abs(out["xla"]).max()) > 1e-2
    np.testing.assert_allclose(out["xla"], out["matmul"], atol=1e-5, rtol=1e-4)


def _group_norm_by_definition(x, scale, bias, groups, eps=1e-6):
    """Statistics over (spatial axes, channels of the group), straight from the paper."""
    xg = x.reshape(*x.shape[:-1], groups, x.shape[-1] // groups)
    axes = (*range(1, x.ndim - 1), x.ndim)
    mean = xg.mean(axis=axes, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=axes, keepdims=True)
    return ((xg - mean) / jnp.sqrt(var + eps)).reshape(x.shape) * scale + bias


@pytest.mark.parametrize("shape", [(3, 4, 5, 8), (3, 8)])
def test_group_norm_matches_its_definition_in_value_and_gradient(shape):
    norm = layers.GroupNorm(8, groups=4)
    norm.scale[...] = jnp.linspace(0.5, 2.0, 8)
    norm.bias[...] = jnp.linspace(-1.0, 1.0, 8)
    # A large common mean: the statistics must not lose it to cancellation.
    x = 100.0 + jax.random.normal(jax.random.key(0), shape) * jnp.linspace(0.1, 3.0, 8)
    weights = jax.random.normal(jax.random.key(1), shape)

    def loss(fn, x):
        return jnp.sum(fn(x) * weights)

    def by_definition(u):
        return _group_norm_by_definition(u, norm.scale[...], norm.bias[...], groups=4)

    ours = jax.value_and_grad(lambda v: loss(norm, v))(x)
    reference = jax.value_and_grad(lambda v: loss(by_definition, v))(x)
    np.testing.assert_allclose(norm(x), by_definition(x), atol=2e-4)
    np.testing.assert_allclose(ours[1], reference[1], atol=2e-4)
    assert abs(float(ours[0]) - float(reference[0])) < 1e-2


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the per-call choice is CPU's")
def test_auto_3x3_conv_on_cpu_takes_xlas_convolution_only_where_it_was_measured_faster():
    def lowers_to_convolution(pixels_side: int, stride: int) -> bool:
        conv = layers.Conv3x3(4, 4, stride=stride, impl="auto", rngs=nnx.Rngs(0))
        x = jnp.zeros((1, pixels_side, pixels_side, 4))
        return "convolution" in jax.jit(lambda m, v: m(v)).lower(conv, x).as_text()

    assert lowers_to_convolution(8, stride=1)
    assert lowers_to_convolution(8, stride=2)
    assert lowers_to_convolution(4, stride=1)  # 16 pixels: the smallest map XLA takes
    assert not lowers_to_convolution(2, stride=1)  # 2x2 maps: patches and one matmul
    assert not lowers_to_convolution(2, stride=2)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the options are XLA:CPU's")
def test_small_images_keep_xla_cpu_convolution_kernels_and_large_ones_get_no_options():
    small = layers.compiler_options((8, 8, 1))
    assert small == {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
    assert layers.compiler_options((32, 32, 3)) == {}
    conv = layers.Conv3x3(3, 5, impl="auto", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 3))
    with_options = jax.jit(lambda m, v: m(v), compiler_options=small)(conv, x)
    np.testing.assert_allclose(with_options, jax.jit(lambda m, v: m(v))(conv, x), atol=1e-5)
    # A jaxlib whose compiler does not know an option or its value gets none.
    assert not layers._cpu_accepts((("xla_cpu_experimental_ynn_fusion_type", "NO_SUCH_TYPE"),))


def test_auto_conv_impl():
    expected = "matmul" if jax.default_backend() == "cpu" else "xla"
    assert layers.resolve_conv_impl("auto") == expected
    with pytest.raises(ValueError, match="conv_impl"):
        layers.resolve_conv_impl("cudnn")


def test_fir_resampling_matches_naive_for_box_kernel():
    up2 = jax.jit(resample.upsample_2d, static_argnums=1, compiler_options=FAST_COMPILE)
    down2 = jax.jit(resample.downsample_2d, static_argnums=1, compiler_options=FAST_COMPILE)
    x = jax.random.normal(jax.random.key(0), (1, 4, 6, 2))
    # A (1, 1) FIR kernel is the box filter: nearest upsampling and 2x2 average pooling.
    np.testing.assert_allclose(up2(x, (1, 1)), up2(x, None), atol=1e-6)
    np.testing.assert_allclose(down2(x, (1, 1)), down2(x, None), atol=1e-6)
    ones = jnp.ones((1, 8, 8, 1))
    up = up2(ones, (1, 3, 3, 1))
    down = down2(ones, (1, 3, 3, 1))
    assert up.shape == (1, 16, 16, 1) and down.shape == (1, 4, 4, 1)
    # Unit DC gain away from the zero-padded border.
    np.testing.assert_allclose(up[:, 1:-1, 1:-1], 1.0, atol=1e-6)
    np.testing.assert_allclose(down[:, 1:-1, 1:-1], 1.0, atol=1e-6)


def test_dropout_is_a_function_of_the_key(base):
    model, params, apply = base
    x, c = _inputs(8)
    k1, k2 = jax.random.key(1), jax.random.key(2)
    a = apply(params, x, c, k1, train=True)
    np.testing.assert_array_equal(a, apply(params, x, c, k1, train=True))
    assert not np.allclose(a, apply(params, x, c, k2, train=True))
    ev = apply(params, x, c, k1)  # train=False: no randomness, the key is ignored
    np.testing.assert_array_equal(ev, apply(params, x, c, k2))
    assert not np.allclose(a, ev)
    with pytest.raises(ValueError, match="key"):
        model(x, c, train=True)


def test_class_conditioning():
    model = networks.get_model(make_config(num_classes=10, init_scale=1.0), nnx.Rngs(0))
    params, apply = jitted(model)
    x, c = _inputs(8)
    # Identical inputs in both batch rows: only the label differs.
    x, c = jnp.concatenate([x[:1], x[:1]]), jnp.full((2,), 3.0)
    y = apply(params, x, c, class_labels=jnp.array([0, 7]))
    assert y.shape == x.shape
    assert not np.allclose(y[0], y[1])
    with pytest.raises(ValueError, match="class_labels"):
        model(x, c)  # a conditional model needs labels
    uncond = networks.get_model(make_config(), nnx.Rngs(0))
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, c, class_labels=jnp.array([1, 2]))


def test_bad_image_size():
    with pytest.raises(ValueError, match=r"image_size 12 .* 2\*\*\(len\(ch_mult\)-1\) = 8"):
        networks.get_model(make_config(image_size=12, ch_mult=(1, 2, 2, 2)), nnx.Rngs(0))


def test_an_attention_resolution_the_unet_does_not_have_is_refused():
    with pytest.raises(ValueError, match=r"model.attn_resolutions names 16, which no level of "
                                         r"this U-Net has: its resolutions are 8, 4"):
        networks.get_model(make_config(attn_resolutions=(16, 4)), nnx.Rngs(0))


def test_unknown_model_name():
    with pytest.raises(ValueError, match=r"'resnet9000'.*ddpmpp.*mlp.*ncsnpp"):
        networks.get_model(make_config(name="resnet9000"), nnx.Rngs(0))


def test_bad_option_names_the_choices():
    with pytest.raises(ValueError, match="progressive"):
        networks.get_model(make_config(progressive="sideways"), nnx.Rngs(0))


def test_mlp_shape_and_conditioning():
    config = make_config(name="mlp", embedding_type="fourier", init_scale=1.0)
    model = networks.get_model(config, nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(0), (5, 2))
    y = model(x, jnp.linspace(-2.0, 3.0, 5))
    assert y.shape == (5, 2)
    assert not np.allclose(y, model(x, jnp.full((5,), 0.5)))
    with pytest.raises(ValueError, match="unconditional"):
        model(x, jnp.zeros(5), class_labels=jnp.zeros(5, jnp.int32))
    model3 = networks.get_model(make_config(name="mlp", dim=3), nnx.Rngs(0))
    assert model3(jnp.ones((4, 3)), jnp.ones(4)).shape == (4, 3)


def test_split_jit_merge_matches_eager(base):
    model, params, apply = base
    x, c = _inputs(8)
    assert all(
        isinstance(v, nnx.Param)
        for v in jax.tree.leaves(params, is_leaf=lambda v: isinstance(v, nnx.Variable))
    )
    eager = model(x, c)
    np.testing.assert_allclose(apply(params, x, c, jax.random.key(0)), eager, atol=1e-5, rtol=1e-5)


def test_fourier_frequencies_get_no_gradient():
    model = networks.get_model(make_config(name="mlp", embedding_type="fourier"), nnx.Rngs(0))
    graphdef, params = nnx.split(model)

    def loss(params):
        net = nnx.merge(graphdef, params)
        return jnp.sum(net(jnp.ones((3, 2)), jnp.ones(3)) ** 2)

    grads = jax.grad(loss)(params)
    assert float(jnp.abs(grads["embed"]["freqs"][...]).max()) == 0.0


def test_param_key_draws_the_keys_of_rngs_params_eagerly_and_traced():
    def keys(next_key, rngs):
        return jnp.stack([jax.random.key_data(next_key(rngs)) for _ in range(3)])

    expected = keys(lambda r: r.params(), nnx.Rngs(7))
    np.testing.assert_array_equal(keys(layers.param_key, nnx.Rngs(7)), expected)
    # Traced, as in an abstract build, and with the stream's count carried out of the trace.
    traced = jax.jit(lambda: keys(layers.param_key, nnx.Rngs(7)))()
    np.testing.assert_array_equal(traced, expected)
    rngs = nnx.Rngs(7)
    layers.param_key(rngs)
    assert int(rngs.params.count.get_value()) == 1
    np.testing.assert_array_equal(jax.random.key_data(layers.param_key(rngs)), expected[1])


def test_an_abstract_build_has_the_parameters_of_a_real_one(base):
    config = make_config(**BASE)
    abstract = nnx.eval_shape(lambda: networks.get_model(config, nnx.Rngs(0)))
    real = base[0]
    shapes = jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(real, nnx.Param))
    assert jax.tree.map(lambda a: (a.shape, a.dtype), nnx.state(abstract, nnx.Param)) == shapes
