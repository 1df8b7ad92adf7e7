"""Spectral normalisation (Miyato et al. 2018) and :class:`NetState`, the variable type of
non-trainable network state that training updates.

:class:`SpectralNorm` wraps a :class:`~networks.layers.Conv3x3`, ``Conv1x1``, ``Dense`` or
``Embed`` and applies it with its weight divided by an estimate of the weight's largest
singular value. The wrapped layer keeps its own parameters (``layer.kernel`` / ``.bias``
or ``layer.table``); the wrapper adds one vector ``u`` of type :class:`NetState`.

A functional train step carries that state next to the parameters::

    graphdef, params, net_state, rest = nnx.split(model, nnx.Param, NetState, ...)

    def loss_fn(params, net_state, batch):
        # copy=True: a plain merge would reuse Variables created by the enclosing trace
        # (jit), and updating them from inside jax.grad raises TraceContextError.
        model = nnx.merge(graphdef, params, net_state, rest, copy=True)
        loss = ...model(batch, train=True)...
        return loss, nnx.state(model, NetState)

    (loss, net_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, net_state, batch
    )

The optimiser sees ``params`` only; ``net_state`` is replaced by the returned value.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv1x1, Conv3x3, Dense, Embed, _conv3x3_matmul, draw, param_key

Array = jax.Array
Layer = Conv3x3 | Conv1x1 | Embed


class NetState(nnx.Variable):
    """Non-trainable network state that changes during training (not by gradient).

    Spectral norm's power-iteration vectors are the instance here; anything similar (e.g.
    running statistics) should use this type too, so that a train step splits out all of it
    with one filter and the optimiser never sees it.
    """


def _normalise(x: Array, eps: float = 1e-12) -> Array:
    # eps guards a zero weight (e.g. a freshly zero-initialised layer): 0 instead of NaN.
    return x * jax.lax.rsqrt(jnp.sum(jnp.square(x)) + eps)


def _weight(layer: Layer) -> nnx.Param:
    if isinstance(layer, Embed):
        return layer.table
    if isinstance(layer, (Conv3x3, Conv1x1)):
        return layer.kernel
    raise TypeError(f"SpectralNorm wraps Conv3x3, Conv1x1, Dense or Embed, not {type(layer)}")


def _apply(layer: Layer, x: Array, weight: Array) -> Array:
    """``layer``'s forward pass with ``weight`` in place of its own kernel/table.

    As the plain layers do, a conv or dense computes in x's dtype: the (float32)
    normalised weight and the bias are cast to it, after sigma was found in float32.
    """
    if isinstance(layer, Embed):
        return jnp.take(weight, jnp.asarray(x, jnp.int32), axis=0)
    weight = weight.astype(x.dtype)
    if isinstance(layer, Conv3x3):
        if layer.impl == "xla":
            s = layer.stride
            y = jax.lax.conv_general_dilated(
                x, weight, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NHWC", "HWIO", "NHWC")
            )
        else:
            y = _conv3x3_matmul(x, weight, layer.stride)
    else:
        # Conv1x1's 'xla' form exists for benchmarking only; the product is the same.
        y = jnp.dot(x, weight)
    return y if layer.bias is None else y + layer.bias[...].astype(y.dtype)


class SpectralNorm(nnx.Module):
    """``layer`` applied with weight ``W / sigma``, sigma ~ the top singular value of W.

    W is viewed as a matrix of shape (fan_in, out): a conv kernel (kh, kw, cin, cout) as
    (kh*kw*cin, cout), an embedding table (num, dim) as it is. The stored unit vector
    ``u`` (out,) approximates W's top right singular vector; sigma = v^T W u with
    v = normalise(W u), both held constant under differentiation (as in the paper, the
    gradient is that of W / sigma for a fixed sigma direction).

    ``train=True`` first advances ``u`` by one power iteration on W^T W (in place), so
    repeated training steps track the top singular vector as W changes; ``train=False``
    uses the stored ``u`` as is. Since v is recomputed from u, an evaluation call right
    after a training call uses exactly the sigma that call used.

    The power iteration and sigma always use the float32 weight (a bfloat16 estimate
    would drift with rounding); only the normalised weight is cast to the input's dtype.
    """

    def __init__(self, layer: Layer, *, rngs: nnx.Rngs):
        self.layer = layer
        out = _weight(layer).shape[-1]
        u = draw(param_key(rngs), (out,), "normal")
        # Plain arithmetic works on both numpy (eager) and traced draws, without compiling.
        self.u = NetState(jnp.asarray(u / (u**2).sum() ** 0.5, jnp.float32))

    def sigma(self, *, train: bool = False) -> Array:
        """The spectral-norm estimate; ``train=True`` first updates ``u`` in place."""
        w = _weight(self.layer)[...]
        w_mat = w.reshape(-1, w.shape[-1])
        u = jax.lax.stop_gradient(self.u[...])
        if train:
            u = jax.lax.stop_gradient(_normalise(w_mat.T @ _normalise(w_mat @ u)))
            self.u[...] = u
        v = jax.lax.stop_gradient(_normalise(w_mat @ u))
        return v @ w_mat @ u

    def __call__(self, x: Array, *, train: bool) -> Array:
        w = _weight(self.layer)[...]
        return _apply(self.layer, x, w / self.sigma(train=train))


def spectral_conv3x3(
    in_ch: int,
    out_ch: int,
    *,
    stride: int = 1,
    init_scale: float = 1.0,
    impl: str = "auto",
    rngs: nnx.Rngs,
) -> SpectralNorm:
    """A spectrally normalised :class:`~networks.layers.Conv3x3`."""
    conv = Conv3x3(in_ch, out_ch, stride=stride, init_scale=init_scale, impl=impl, rngs=rngs)
    return SpectralNorm(conv, rngs=rngs)


def spectral_conv1x1(
    in_ch: int, out_ch: int, *, init_scale: float = 1.0, rngs: nnx.Rngs
) -> SpectralNorm:
    """A spectrally normalised :class:`~networks.layers.Conv1x1`."""
    return SpectralNorm(Conv1x1(in_ch, out_ch, init_scale=init_scale, rngs=rngs), rngs=rngs)


def spectral_dense(
    in_dim: int, out_dim: int, *, init_scale: float = 1.0, rngs: nnx.Rngs
) -> SpectralNorm:
    """A spectrally normalised :class:`~networks.layers.Dense`."""
    return SpectralNorm(Dense(in_dim, out_dim, init_scale=init_scale, rngs=rngs), rngs=rngs)


def spectral_embed(num: int, dim: int, *, rngs: nnx.Rngs) -> SpectralNorm:
    """A spectrally normalised :class:`~networks.layers.Embed` (projection discriminators)."""
    return SpectralNorm(Embed(num, dim, rngs=rngs), rngs=rngs)


__all__ = [
    "NetState",
    "SpectralNorm",
    "spectral_conv1x1",
    "spectral_conv3x3",
    "spectral_dense",
    "spectral_embed",
]
