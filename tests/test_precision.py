"""Mixed precision (`model.dtype`) and rematerialisation (`model.remat`) across the zoo.

bfloat16 keeps 8 bits of mantissa (relative rounding 2**-9 ~ 0.2 %), so a network run in
it differs from its float32 self by a few tenths of a percent per layer; the tolerances
below are the measured errors of these tiny networks with some margin, and far below what
a broken cast (a float32 layer fed bfloat16 garbage, a lost residual) would give.
Parameters are jittered away from their initialisation first, so that the zero-initialised
output convs of residual branches carry signal and every path is compared.
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import networks
from diffusion import losses
from errors import UserError
from networks import gan, noise_classifier, vae
from networks.spectral_norm import NetState
from tests import cli_zygote
from tests.configs import tiny, tiny_families, tiny_guided
from training.families import get_family

ROOT = Path(__file__).resolve().parents[1]
BATCH = 4

# Upper bounds on the relative L2 error of the bfloat16 forward pass against float32 (same
# jittered parameters, CPU); measured: the U-Net 2.1-2.2 %, the VAE's encoder 1.5-1.9 % and
# decoder 1.3 %, the GAN generators 0.5-0.7 % and discriminators 0.2-0.5 %, the MLP 0.8 %,
# the noise classifier 0.2-0.3 %. The error grows with depth: each layer rounds its output
# to bfloat16 (matmuls and convolutions accumulate in float32).
FORWARD_RTOL = {"unet": 0.05, "vae": 0.04, "gan": 0.02, "mlp": 0.02, "noise_cnn": 0.01}
# The tiny U-Net's diffusion loss and gradients, bfloat16 against float32 (same jittered
# params, dropout and noise keys, batch); measured: the loss 0.03 % apart, the gradients'
# global norm 0.14 %, their cosine similarity 0.99968.
LOSS_RTOL = 5e-3
GRAD_NORM_RTOL = 1e-2
GRAD_COSINE_MIN = 0.998
# Remat recomputes the same float32 operations in the backward pass, so the gradients agree
# to float32 rounding; XLA fuses the recomputed program differently, which reorders a few
# sums. Measured relative L2 difference of the gradients: the U-Net 7e-7, the VAE 1.2e-6,
# the ResNet GAN 1e-7, the noise classifier 8e-8 (a wrong dropout mask or a lost update
# would be of order 1e-1).
REMAT_RTOL = 5e-6


def _rel_err(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _jitter(params, seed: int = 0, scale: float = 0.05):
    """Parameters moved off their initialisation, as training moves them: zero-initialised
    layers (residual outputs, biases) then contribute, so every path is exercised."""
    # numpy draws: jax.random compiles once per parameter shape (seconds on CPU).
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda p: p + jnp.asarray(scale * rng.standard_normal(p.shape), p.dtype), params
    )


def _pair(build):
    """(f32 module, bf16 module) with the same jittered float32 parameters.

    ``build(dtype)`` builds one; both are seeded alike, and the bfloat16 one is given the
    float32 one's parameters, so only the compute dtype differs.
    """
    f32, bf16 = build("float32"), build("bfloat16")
    params = _jitter(nnx.state(f32, nnx.Param))
    nnx.update(f32, params)
    nnx.update(bf16, params)
    for module in (f32, bf16):  # the policy: parameters stay float32 whatever the dtype
        assert {p.dtype for p in jax.tree.leaves(nnx.state(module, nnx.Param))} == {
            jnp.dtype(jnp.float32)
        }
    return f32, bf16


def _run(module, *args, **kwargs):
    """``module(*args, **kwargs)`` compiled (the way training calls it: under jit)."""
    return nnx.jit(lambda m, *a: m(*a, **kwargs))(module, *args)


def _images(seed: int, channels: int = 1, size: int = 8) -> jax.Array:
    return jax.random.uniform(jax.random.key(seed), (BATCH, size, size, channels), minval=-1.0,
                              maxval=1.0)


def _assert_close_f32(out_f32, out_bf16, rtol: float) -> float:
    assert out_bf16.dtype == jnp.float32 and out_f32.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(out_bf16)))
    err = _rel_err(out_bf16, out_f32)
    assert 0.0 < err < rtol, err  # 0 would mean bfloat16 was never used
    return err


# ----------------------------------------------------------------------------------------
# (a) the bfloat16 forward pass of each network: float32 out, within FORWARD_RTOL


def test_unet_bf16_forward_is_float32_and_close():
    config = tiny.get_config()

    def build(dtype):
        config.model.dtype = dtype
        return networks.get_model(config, nnx.Rngs(0))

    f32, bf16 = _pair(build)
    x, t = _images(1), jnp.linspace(10.0, 900.0, BATCH)
    _assert_close_f32(_run(f32, x, t), _run(bf16, x, t), FORWARD_RTOL["unet"])


def test_vae_bf16_encoder_and_decoder_are_float32_and_close():
    config = tiny_families.get_config("vae")

    def build(dtype):
        config.model.dtype = dtype
        return nnx.List(vae.from_config(config, 2, nnx.Rngs(0)))

    f32, bf16 = _pair(build)
    x = _images(2)
    (mean32, logvar32), (mean16, logvar16) = _run(f32[0], x), _run(bf16[0], x)
    _assert_close_f32(mean32, mean16, FORWARD_RTOL["vae"])
    _assert_close_f32(logvar32, logvar16, FORWARD_RTOL["vae"])
    out32, out16 = _run(f32[1], mean32), _run(bf16[1], mean32)
    _assert_close_f32(out32, out16, FORWARD_RTOL["vae"])


@pytest.mark.parametrize("name", ["resnet", "dcgan"])
def test_gan_bf16_generator_and_discriminator_are_float32_and_close(name):
    config = tiny_families.get_config("gan_sn")  # spectral norm and projection labels
    config.model.name = name

    def build(dtype):
        config.model.dtype = dtype
        return nnx.List(gan.from_config(config, nnx.Rngs(0)))

    f32, bf16 = _pair(build)
    z = jax.random.normal(jax.random.key(3), (BATCH, config.model.latent_dim))
    labels = jnp.arange(BATCH) % config.model.num_classes
    _assert_close_f32(_run(f32[0], z, class_labels=labels),
                      _run(bf16[0], z, class_labels=labels), FORWARD_RTOL["gan"])
    x = _images(4)
    _assert_close_f32(_run(f32[1], x, class_labels=labels),
                      _run(bf16[1], x, class_labels=labels), FORWARD_RTOL["gan"])
    # Power iteration runs on the float32 weights: the same sigma whatever the dtype.
    _run(f32[1], x, class_labels=labels, train=True)
    _run(bf16[1], x, class_labels=labels, train=True)
    u32, u16 = nnx.state(f32[1], NetState), nnx.state(bf16[1], NetState)
    assert {u.dtype for u in jax.tree.leaves(u16)} == {jnp.dtype(jnp.float32)}
    jax.tree.map(lambda a, b: np.testing.assert_array_equal(a, b), u32, u16)


def test_mlp_bf16_forward_is_float32_and_close():
    config = tiny.get_config("toy")
    config.model.init_scale = 1.0  # a near-zero output layer would hide the hidden layers

    def build(dtype):
        config.model.dtype = dtype
        return networks.get_model(config, nnx.Rngs(0))

    f32, bf16 = _pair(build)
    x = jax.random.normal(jax.random.key(5), (64, 2))
    t = jnp.linspace(1.0, 999.0, 64)
    _assert_close_f32(_run(f32, x, t), _run(bf16, x, t), FORWARD_RTOL["mlp"])


def test_noise_classifier_bf16_logits_are_float32_and_close():
    config = tiny_guided.get_config("classifier")

    def build(dtype):
        config.model.dtype = dtype
        return noise_classifier.from_config(config, 10, nnx.Rngs(0))

    f32, bf16 = _pair(build)
    x, t = _images(6), jnp.linspace(10.0, 900.0, BATCH)
    _assert_close_f32(_run(f32, x, t), _run(bf16, x, t), FORWARD_RTOL["noise_cnn"])


# ----------------------------------------------------------------------------------------
# (b) the diffusion family in bfloat16: loss and gradients close to float32, state float32


def _unet_config(dtype: str = "float32", remat: str = "none"):
    """tiny's digits VP U-Net: attention at 4x4 and dropout 0.1, so both are exercised."""
    config = tiny.get_config()
    config.model.dtype = dtype
    config.model.remat = remat
    return config


@pytest.fixture(scope="module")
def unet_params():
    """Jittered U-Net parameters (float32) that every variant below is evaluated at."""
    return _jitter(get_family(_unet_config()).init_params(jax.random.PRNGKey(0)))


def _loss_and_grads(family, params, batch_size: int = 8):
    """The family's training loss (fixed dropout and noise keys, fixed batch) and its
    gradients, through its public `score_fn` and `loss_fn`."""
    images = _images(7)
    images = jnp.concatenate([images, -images])[:batch_size]
    dropout_key, loss_key = jax.random.split(jax.random.PRNGKey(11))

    def objective(params):
        score_fn = family.score_fn(params, train=True, key=dropout_key)
        return family.loss_fn(score_fn, losses.example_keys(loss_key, batch_size), images)

    return jax.jit(jax.value_and_grad(objective))(params)


def _flat(tree) -> np.ndarray:
    return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def unet_f32_loss_and_grads(unet_params):
    return _loss_and_grads(get_family(_unet_config()), unet_params)


def test_unet_bf16_loss_and_gradients_are_close_to_float32(unet_params, unet_f32_loss_and_grads):
    loss32, grads32 = unet_f32_loss_and_grads
    loss16, grads16 = _loss_and_grads(get_family(_unet_config("bfloat16")), unet_params)
    assert loss16.dtype == jnp.float32
    assert {g.dtype for g in jax.tree.leaves(grads16)} == {jnp.dtype(jnp.float32)}
    g32, g16 = _flat(grads32), _flat(grads16)
    assert abs(float(loss16) - float(loss32)) / abs(float(loss32)) < LOSS_RTOL
    assert abs(np.linalg.norm(g16) - np.linalg.norm(g32)) / np.linalg.norm(g32) < GRAD_NORM_RTOL
    cosine = g16 @ g32 / (np.linalg.norm(g16) * np.linalg.norm(g32))
    assert cosine > GRAD_COSINE_MIN


def _dtypes(tree) -> set:
    return {jnp.dtype(x.dtype) for x in jax.tree.leaves(tree)}


def test_bf16_training_keeps_parameters_optimizer_state_ema_and_loss_float32():
    family = get_family(_unet_config("bfloat16"))
    state = family.init_state(jax.random.PRNGKey(0))
    for part in (state.params, state.opt_state, state.ema_params):
        floats = {d for d in _dtypes(part) if jnp.issubdtype(d, jnp.floating)}
        assert floats == {jnp.dtype(jnp.float32)}
    batch = {"image": _images(8)}
    new_state, metrics = jax.jit(family.train_step)(state, batch)
    assert jax.tree.map(lambda x: x.dtype, new_state) == jax.tree.map(lambda x: x.dtype, state)
    assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
    assert metrics["grad_norm"].dtype == jnp.float32


# ----------------------------------------------------------------------------------------
# (c) remat='block' gives the gradients of remat='none'


def _uses_remat(module, fn, *args) -> bool:
    """Whether ``fn(module, *args)`` traces to a program with a rematerialised
    (jax.checkpoint) region. The module is merged inside the trace, as training does."""
    graphdef, state = nnx.split(module)
    jaxpr = jax.make_jaxpr(lambda state, *a: fn(nnx.merge(graphdef, state), *a))(state, *args)
    text = str(jaxpr)
    return "remat" in text or "checkpoint" in text  # the primitive's name varies by jax


def _assert_same_grads(grads_remat, grads_plain) -> float:
    a, b = _flat(grads_remat), _flat(grads_plain)
    err = float(np.linalg.norm(a - b) / np.linalg.norm(b))
    assert np.linalg.norm(b) > 0 and err < REMAT_RTOL, err
    return err


def test_unet_remat_gives_the_gradients_of_no_remat(unet_params, unet_f32_loss_and_grads):
    """Attention and dropout (a fixed key) included: the recomputed blocks draw the same
    dropout masks in the backward pass."""
    loss, grads = unet_f32_loss_and_grads
    family = get_family(_unet_config(remat="block"))
    model = nnx.merge(family.graphdef, unet_params, family._rest)
    x, t = _images(1), jnp.full((BATCH,), 500.0)
    assert _uses_remat(model, lambda m, x: m(x, t, train=True, key=jax.random.key(0)), x)
    loss_remat, grads_remat = _loss_and_grads(family, unet_params)
    assert float(loss_remat) == pytest.approx(float(loss), rel=REMAT_RTOL)
    _assert_same_grads(grads_remat, grads)


def _grads_of(module, objective):
    """Gradients of ``objective(module)`` w.r.t. its parameters, and its other state after."""
    graphdef, params, rest = nnx.split(module, nnx.Param, ...)

    @jax.jit
    def run(params, rest):
        def loss(params):
            m = nnx.merge(graphdef, params, rest, copy=True)
            return objective(m), nnx.state(m, NetState)

        return jax.grad(loss, has_aux=True)(params)

    return run(params, rest)


def _weights(seed: int, shape) -> jax.Array:
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def test_vae_remat_gives_the_gradients_of_no_remat():
    config = tiny_families.get_config("vae")
    x = _images(2)

    def grads(remat: str):
        config.model.remat = remat
        enc_dec = nnx.List(vae.from_config(config, 2, nnx.Rngs(0)))
        nnx.update(enc_dec, _jitter(nnx.state(enc_dec, nnx.Param)))

        def objective(m):
            mean, logvar = m[0](x)
            out = m[1](mean)
            return (jnp.sum(_weights(1, mean.shape) * mean) + jnp.sum(logvar)
                    + jnp.sum(_weights(2, out.shape) * out))

        if remat == "block":
            assert _uses_remat(enc_dec, lambda m, x: m[1](m[0](x)[0]), x)
        return _grads_of(enc_dec, objective)[0]

    _assert_same_grads(grads("block"), grads("none"))


def test_resnet_gan_remat_gives_the_gradients_and_power_iterations_of_no_remat():
    """Spectral norm's power iteration runs inside the rematerialised blocks (train=True):
    its updated vectors must come out the same too."""
    config = tiny_families.get_config("gan_sn")
    z = jax.random.normal(jax.random.key(3), (BATCH, config.model.latent_dim))
    labels = jnp.arange(BATCH) % config.model.num_classes

    def grads(remat: str):
        config.model.remat = remat
        pair = nnx.List(gan.from_config(config, nnx.Rngs(0)))
        nnx.update(pair, _jitter(nnx.state(pair, nnx.Param)))

        def objective(m):
            fake = m[0](z, class_labels=labels, train=True)
            return jnp.sum(jax.nn.softplus(-m[1](fake, class_labels=labels, train=True)))

        if remat == "block":
            assert _uses_remat(pair, lambda m, z: m[1](m[0](z, class_labels=labels),
                                                       class_labels=labels), z)
        return _grads_of(pair, objective)

    (g_remat, u_remat), (g_plain, u_plain) = grads("block"), grads("none")
    _assert_same_grads(g_remat, g_plain)
    np.testing.assert_allclose(_flat(u_remat), _flat(u_plain), rtol=REMAT_RTOL, atol=1e-7)


def test_noise_classifier_remat_gives_the_gradients_of_no_remat():
    config = tiny_guided.get_config("classifier")
    config.model.dropout = 0.1
    x, t = _images(6), jnp.linspace(10.0, 900.0, BATCH)
    key = jax.random.key(5)

    def grads(remat: str):
        config.model.remat = remat
        model = noise_classifier.from_config(config, 10, nnx.Rngs(0))
        nnx.update(model, _jitter(nnx.state(model, nnx.Param)))
        return _grads_of(model, lambda m: jnp.sum(
            jax.nn.log_softmax(m(x, t, train=True, key=key))[:, 3]))[0]

    _assert_same_grads(grads("block"), grads("none"))


# ----------------------------------------------------------------------------------------
# (d) settings no network can honour are refused in one line, before anything is built

_HAVE_BLOCKS = "conv_vae, ddpmpp, ncsnpp, noise_cnn, resnet"


@pytest.mark.parametrize(
    "make, setting, value, message",
    [
        (lambda: tiny.get_config(), "dtype", "float16",
         "model.dtype='float16' is not one of ('float32', 'bfloat16')"),
        (lambda: tiny_families.get_config("vae"), "remat", "full",
         "model.remat='full' is not one of ('none', 'block')"),
        (lambda: tiny.get_config("toy"), "remat", "block",
         "model.remat='block' needs a network with residual blocks; model.name='mlp' has "
         f"none ({_HAVE_BLOCKS} have)"),
        (lambda: tiny_families.get_config("gan"), "remat", "block",
         "model.remat='block' needs a network with residual blocks; model.name='dcgan' has "
         f"none ({_HAVE_BLOCKS} have)"),
    ],
)
def test_unknown_dtype_or_remat_and_remat_without_blocks_are_refused(make, setting, value,
                                                                     message):
    config = make()
    config.model[setting] = value
    with pytest.raises(UserError) as err:
        get_family(config)
    assert str(err.value) == message


def test_remat_networks_registry_matches_the_networks():
    """Every network declared rematerialisable takes remat='block' (the ones tested above,
    plus NCSN++, the U-Net under another configuration)."""
    assert networks.REMAT_NETWORKS == {"ddpmpp", "ncsnpp", "resnet", "conv_vae", "noise_cnn"}
    config = tiny.get_config("vesde")
    config.model.remat = "block"
    assert get_family(config).config.model.name == "ncsnpp"


def test_train_py_refuses_remat_on_the_mlp_in_one_line_and_writes_nothing(tmp_path):
    workdir = tmp_path / "run"
    proc = cli_zygote.run(
        "train.py", f"--config={ROOT / 'tests' / 'configs' / 'tiny.py'}:toy",
        f"--workdir={workdir}", "--config.model.remat=block", timeout=300)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].endswith("model.remat='block' needs a network with residual blocks; "
                              f"model.name='mlp' has none ({_HAVE_BLOCKS} have)")
    assert not workdir.exists()
