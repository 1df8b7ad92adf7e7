"""An MLP score network for low-dimensional (toy 2-D) data.

``dtype`` is the compute dtype of the hidden layers; the noise (and label) embedding is
computed in float32 and cast where it joins x, the output leaves as float32. It has no
residual blocks, so there is nothing for ``model.remat='block'`` to wrap.
"""

from __future__ import annotations

import itertools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Dense, Embed, NoiseEmbedding, compute_dtype, dropout

Array = jax.Array


class MLP(nnx.Module):
    """``model(x, c_noise, ...)`` for x of shape (B, D): [x, emb(c_noise)] -> SiLU MLP -> (B, D).

    The noise embedding is concatenated to the input (and, for class-conditional models, a
    learned label embedding is added to it), then ``num_layers`` SiLU layers of width
    ``hidden`` and a near-zero output layer (``init_scale``).
    """

    def __init__(
        self,
        *,
        dim: int,
        hidden: int = 128,
        num_layers: int = 3,
        embedding_type: str = "fourier",
        fourier_scale: float = 16.0,
        embed_dim: int = 32,
        dropout: float = 0.0,
        init_scale: float = 0.0,
        num_classes: int = 0,
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        if num_layers < 1:
            raise ValueError(f"model.num_layers must be >= 1, got {num_layers}")
        self.dtype = compute_dtype(dtype)
        self.dim = dim
        self.dropout = dropout
        self.num_classes = num_classes
        self.embed = NoiseEmbedding(
            embedding_type, embed_dim, fourier_scale=fourier_scale, rngs=rngs
        )
        self.label_embed = Embed(num_classes, embed_dim, rngs=rngs) if num_classes > 0 else None
        widths = [dim + embed_dim] + [hidden] * num_layers
        self.layers = nnx.List([Dense(a, b, rngs=rngs) for a, b in itertools.pairwise(widths)])
        self.out = Dense(hidden, dim, init_scale=init_scale, rngs=rngs)

    def __call__(
        self,
        x: Array,
        c_noise: Array,
        *,
        train: bool = False,
        key: Array | None = None,
        class_labels: Array | None = None,
    ) -> Array:
        """Float32 score-network output of shape (B, D); ``key`` drives dropout when
        ``train``."""
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"expected x of shape (B, {self.dim}), got {x.shape}")
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (x.shape[0],))
        emb = self.embed(c_noise)
        if self.label_embed is not None:
            if class_labels is None:
                raise ValueError(
                    f"this model is class-conditional (num_classes={self.num_classes}): "
                    "pass class_labels"
                )
            emb = emb + self.label_embed(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes=0)")
        use_dropout = train and self.dropout > 0
        if use_dropout and key is None:
            raise ValueError("train=True with dropout > 0 needs a PRNG key (key=...)")
        h = jnp.concatenate([x.astype(self.dtype), emb.astype(self.dtype)], axis=-1)
        for i, layer in enumerate(self.layers):
            h = jax.nn.silu(layer(h))
            h = dropout(h, self.dropout, jax.random.fold_in(key, i) if use_dropout else None)
        return self.out(h).astype(jnp.float32)


def from_config(config: Any, rngs: nnx.Rngs) -> MLP:
    """Build an :class:`MLP` from ``config.model``; data dimension ``config.data.dim`` (2)."""
    m = config.model
    if m.get("remat", "none") != "none":
        raise ValueError(f"model.remat={m.remat!r} needs residual blocks; the MLP has none")
    return MLP(
        dim=config.data.get("dim", 2),
        hidden=m.get("hidden", 128),
        num_layers=m.get("num_layers", 3),
        embedding_type=m.get("embedding_type", "fourier"),
        fourier_scale=m.get("fourier_scale", 16.0),
        embed_dim=m.get("embed_dim", 32),
        dropout=m.get("dropout", 0.0),
        init_scale=m.get("init_scale", 0.0),
        num_classes=m.get("num_classes", 0),
        dtype=m.get("dtype", "float32"),
        rngs=rngs,
    )
