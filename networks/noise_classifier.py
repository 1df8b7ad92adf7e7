"""A noise-conditional classifier p(y | x_t, t) for classifier guidance: the down path of
the DDPM++ U-Net (the same residual blocks, conditioned on an embedding of the time)
followed by global average pooling and a linear head.

``model(x, c_noise, *, train=False, key=None) -> logits (B, num_classes)``; ``c_noise`` is
the float (B,) time conditioning the caller chooses (the family feeds ``999 t / T``).
``num_classes=1`` gives one logit: the real-vs-generated discriminator of discriminator
guidance.

``dtype`` is the compute dtype of the feature maps: the time embedding stays float32 (each
block casts its projection where it meets them), the pooled features and the linear head
are float32, so the logits (and the log-softmax of the loss) are float32.
``remat='block'`` recomputes each residual block in the backward pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv3x3, Dense, GroupNorm, NoiseEmbedding, compute_dtype
from networks.unet_blocks import REMAT, ResBlock

Array = jax.Array


class NoiseClassifier(nnx.Module):
    """Residual CNN over noisy images, time-conditioned in every block (like the U-Net)."""

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        num_classes: int,
        nf: int = 32,
        ch_mult: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 1,
        dropout: float = 0.1,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        if num_classes < 1:
            raise ValueError(f"a classifier needs at least 1 output (1: a binary logit), got "
                             f"{num_classes}")
        factor = 2 ** (len(ch_mult) - 1)
        if not ch_mult or image_size % factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by 2**(len(ch_mult)-1) = {factor}"
            )
        if remat not in REMAT:
            raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}")
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.image_shape = (image_size, image_size, num_channels)
        self.num_classes = num_classes
        self.dropout = dropout
        temb_dim = 4 * nf
        self.embed = NoiseEmbedding("positional", nf, rngs=rngs)
        self.temb0 = Dense(nf, temb_dim, rngs=rngs)
        self.temb1 = Dense(temb_dim, temb_dim, rngs=rngs)
        self.conv_in = Conv3x3(num_channels, nf, impl=conv_impl, rngs=rngs)
        blocks, ch = [], nf
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                blocks.append(self._block(ch, nf * mult, temb_dim, len(blocks), None,
                                          conv_impl, rngs))
                ch = nf * mult
            if i != len(ch_mult) - 1:
                blocks.append(self._block(ch, ch, temb_dim, len(blocks), "down", conv_impl, rngs))
        self.blocks = nnx.List(blocks)
        self.norm_out = GroupNorm(ch)
        self.head = Dense(ch, num_classes, rngs=rngs)

    def _block(self, cin, cout, temb_dim, index, resample, conv_impl, rngs) -> ResBlock:
        return ResBlock(cin, cout, temb_dim=temb_dim, dropout=self.dropout, skip_rescale=True,
                        init_scale=0.0, key_index=index + 1, resample=resample,
                        conv_impl=conv_impl, rngs=rngs)

    def __call__(self, x: Array, c_noise: Array, *, train: bool = False,
                 key: Array | None = None) -> Array:
        if x.ndim != 4 or tuple(x.shape[1:]) != self.image_shape:
            raise ValueError(f"expected x of shape (B, {', '.join(map(str, self.image_shape))})"
                             f", got {x.shape}")
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (x.shape[0],))
        temb = jax.nn.silu(self.temb1(jax.nn.silu(self.temb0(self.embed(c_noise)))))
        use_dropout = train and self.dropout > 0
        if use_dropout and key is None:
            raise ValueError("train=True with dropout > 0 needs a PRNG key (key=...)")

        def run(b: ResBlock, h: Array, temb: Array, key: Array | None) -> Array:
            return b(h, temb, key)

        if self.remat == "block":
            run = nnx.remat(run)
        h = self.conv_in(x.astype(self.dtype))
        for b in self.blocks:
            h = run(b, h, temb, jax.random.fold_in(key, b.key_index) if use_dropout else None)
        # Pool and classify in float32: the mean of H*W bfloat16 terms, then a tiny matmul.
        h = jnp.mean(jax.nn.silu(self.norm_out(h)).astype(jnp.float32), axis=(1, 2))
        return self.head(h)


def from_config(config: Any, num_classes: int, rngs: nnx.Rngs) -> NoiseClassifier:
    """Build from ``config.model`` (nf, ch_mult, num_res_blocks, dropout, conv_impl, dtype,
    remat) and ``config.data`` (image_size, num_channels)."""
    m = config.model
    return NoiseClassifier(
        image_size=config.data.image_size,
        num_channels=config.data.num_channels,
        num_classes=num_classes,
        nf=m.nf,
        ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks,
        dropout=m.dropout,
        conv_impl=m.get("conv_impl", "auto"),
        dtype=m.get("dtype", "float32"),
        remat=m.get("remat", "none"),
        rngs=rngs,
    )
