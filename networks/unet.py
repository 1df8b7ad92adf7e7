"""The DDPM++ / NCSN++ U-Net family (score_sde's ``NCSNpp``) in Flax NNX, NHWC.

One class covers both names: DDPM++ is the configuration with ``fir=False`` and no
progressive paths, NCSN++ turns on FIR resampling and the progressive input/output
pyramids. Differences from score_sde, all deliberate:

* the noise-conditioning input ``c_noise`` arrives ready-made (VP: 999 t, VE: log sigma),
  so the network never takes a log or rescales its output by sigma;
* input centring is the data pipeline's job (``config.data.centered``), not the network's;
* FIR resampling with a conv blurs first and then applies a plain 3x3 conv instead of a
  fused (transposed) strided conv, so every 3x3 conv goes through ``layers.Conv3x3``;
* dropout is a pure function of the ``key`` argument (no RNG state in the module).

``dtype`` is the compute dtype of the feature maps (float32 or bfloat16); the noise
embedding, GroupNorm statistics, the attention softmax and the output stay float32.
``remat='block'`` recomputes each residual and attention block in the backward pass.
The blocks themselves live in :mod:`networks.unet_blocks`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import Conv3x3, Dense, Embed, NoiseEmbedding, compute_dtype
from networks.resample import Downsample, Upsample
from networks.unet_blocks import (
    REMAT,
    AttnBlock,
    Combine,
    CrossAttnBlock,
    Level,
    NormActConv,
    ResBlock,
    _check_choice,
)

Array = jax.Array

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")


class UNet(nnx.Module):
    """score_sde's NCSN++ U-Net: ``model(x, c_noise, *, train, key, class_labels)``.

    ``x`` is (B, H, W, C) with H == W == ``image_size``; the output has x's shape.
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        resamp_with_conv: bool = True,
        skip_rescale: bool = True,
        resblock_type: str = "biggan",
        embedding_type: str = "positional",
        fourier_scale: float = 16.0,
        init_scale: float = 0.0,
        conv_impl: str = "auto",
        nin_impl: str = "matmul",
        num_classes: int = 0,
        text_dim: int = 0,
        text_attn_resolutions: Sequence[int] = (),
        fir: bool = False,
        fir_kernel: Sequence[int] = (1, 3, 3, 1),
        progressive: str = "none",
        progressive_input: str = "none",
        progressive_combine: str = "sum",
        conv_shortcut: bool = False,
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_choice("resblock_type", resblock_type, RESBLOCK_TYPES)
        _check_choice("remat", remat, REMAT)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        _check_choice("progressive", progressive, PROGRESSIVE)
        _check_choice("progressive_input", progressive_input, PROGRESSIVE_INPUT)
        n_levels = len(ch_mult)
        factor = 2 ** (n_levels - 1)
        if n_levels < 1 or image_size % factor:
            raise ValueError(
                f"image_size {image_size} is not divisible by 2**(len(ch_mult)-1) = {factor} "
                f"(ch_mult={tuple(ch_mult)} halves the resolution {n_levels - 1} times)"
            )
        levels = [image_size // 2**i for i in range(n_levels)]
        for key, wanted in (("attn_resolutions", attn_resolutions),
                            ("text_attn_resolutions", text_attn_resolutions if text_dim else ())):
            missing = sorted(set(wanted) - set(levels), reverse=True)
            if missing:  # a typo would otherwise silently drop the attention
                raise ValueError(
                    f"model.{key} names {', '.join(map(str, missing))}, which no level of "
                    f"this U-Net has: its resolutions are {', '.join(map(str, levels))}")
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_classes = num_classes
        self.dropout = dropout
        self.skip_rescale = skip_rescale
        self.progressive = progressive
        self.progressive_input = progressive_input

        temb_dim = 4 * nf
        self.embed = NoiseEmbedding(embedding_type, nf, fourier_scale=fourier_scale, rngs=rngs)
        self.temb0 = Dense(nf, temb_dim, rngs=rngs)
        self.temb1 = Dense(temb_dim, temb_dim, rngs=rngs)
        self.label_embed = Embed(num_classes, temb_dim, rngs=rngs) if num_classes > 0 else None
        # Text conditioning: the pooled prompt embedding joins the time embedding.
        self.text_dim = text_dim
        self.text_embed = Dense(text_dim, temb_dim, rngs=rngs) if text_dim > 0 else None
        text_res = set(text_attn_resolutions) if text_dim > 0 else set()

        fir_k = tuple(fir_kernel) if fir else None
        n_blocks = 0

        def res_block(cin: int, cout: int, resample: str | None = None) -> ResBlock:
            nonlocal n_blocks
            n_blocks += 1
            return ResBlock(
                cin, cout, temb_dim=temb_dim, dropout=dropout, skip_rescale=skip_rescale,
                init_scale=init_scale, key_index=n_blocks, resample=resample, fir_kernel=fir_k,
                conv_shortcut=conv_shortcut, conv_impl=conv_impl, nin_impl=nin_impl, rngs=rngs,
            )  # fmt: skip

        def attn(ch: int) -> AttnBlock:
            return AttnBlock(
                ch, skip_rescale=skip_rescale, init_scale=init_scale, nin_impl=nin_impl, rngs=rngs
            )

        def cross(ch: int) -> CrossAttnBlock:
            return CrossAttnBlock(ch, text_dim, skip_rescale=skip_rescale,
                                  init_scale=init_scale, nin_impl=nin_impl, rngs=rngs)

        def resampler(kind: type, cin: int, cout: int, with_conv: bool) -> nnx.Module:
            return kind(cin, cout, with_conv=with_conv, fir_kernel=fir_k, impl=conv_impl, rngs=rngs)

        # Construction replays the forward pass on channel counts (NNX has no shape inference).
        self.conv_in = Conv3x3(num_channels, nf, impl=conv_impl, rngs=rngs)
        skips, ch, res, pyr_ch = [nf], nf, image_size, num_channels
        self.down = nnx.List([])
        for i, mult in enumerate(ch_mult):
            level = Level()
            for _ in range(num_res_blocks):
                level.blocks.append(res_block(ch, nf * mult))
                ch = nf * mult
                if res in attn_resolutions:
                    level.attns.append(attn(ch))
                if res in text_res:
                    level.crosses.append(cross(ch))
                skips.append(ch)
            if i != n_levels - 1:
                if resblock_type == "ddpm":
                    level.resample = resampler(Downsample, ch, ch, resamp_with_conv)
                else:
                    level.resample = res_block(ch, ch, "down")
                if progressive_input == "input_skip":
                    level.pyramid_resample = resampler(Downsample, pyr_ch, pyr_ch, False)
                    level.combine = Combine(
                        pyr_ch, ch, method=progressive_combine, impl=nin_impl, rngs=rngs
                    )
                    ch = ch if progressive_combine == "sum" else 2 * ch
                elif progressive_input == "residual":
                    level.pyramid_resample = resampler(Downsample, pyr_ch, ch, True)
                    pyr_ch = ch
                skips.append(ch)
                res //= 2
            self.down.append(level)

        self.mid_block0 = res_block(ch, ch)
        self.mid_attn = attn(ch)
        self.mid_cross = cross(ch) if res in text_res else nnx.data(None)
        self.mid_block1 = res_block(ch, ch)

        self.up = nnx.List([])
        for i in reversed(range(n_levels)):
            level = Level()
            for _ in range(num_res_blocks + 1):
                level.blocks.append(res_block(ch + skips.pop(), nf * ch_mult[i]))
                ch = nf * ch_mult[i]
            if res in attn_resolutions:
                level.attns.append(attn(ch))
            if res in text_res:
                level.crosses.append(cross(ch))
            coarsest = i == n_levels - 1  # the first level of the up path
            if progressive == "output_skip":
                level.pyramid_head = NormActConv(
                    ch, num_channels, init_scale=init_scale, impl=conv_impl, rngs=rngs
                )
                if not coarsest:
                    level.pyramid_resample = resampler(Upsample, num_channels, num_channels, False)
            elif progressive == "residual":
                if coarsest:
                    level.pyramid_head = NormActConv(
                        ch, ch, init_scale=1.0, impl=conv_impl, rngs=rngs
                    )
                else:
                    level.pyramid_resample = resampler(Upsample, pyr_ch, ch, True)
                pyr_ch = ch
            if i != 0:
                if resblock_type == "ddpm":
                    level.resample = resampler(Upsample, ch, ch, resamp_with_conv)
                else:
                    level.resample = res_block(ch, ch, "up")
                res *= 2
            self.up.append(level)
        assert not skips, "U-Net skip bookkeeping is unbalanced"

        self.head = (
            None
            if progressive == "output_skip"
            else NormActConv(ch, num_channels, init_scale=init_scale, impl=conv_impl, rngs=rngs)
        )

    # --------------------------------------------------------------------------------------

    def _temb(self, c_noise: Array, class_labels: Array | None,
              text: tuple[Array, Array, Array] | None) -> Array:
        temb = self.temb1(jax.nn.silu(self.temb0(self.embed(c_noise))))
        if self.text_embed is not None:
            if text is None:
                raise ValueError(f"this model is text-conditional (text_dim={self.text_dim}): "
                                 "pass text=(tokens, mask, pooled)")
            temb = temb + self.text_embed(text[2].astype(jnp.float32))
        elif text is not None:
            raise ValueError("text given to a model without text conditioning (text_dim=0)")
        if self.label_embed is not None:
            if class_labels is None:
                raise ValueError(
                    f"this model is class-conditional (num_classes={self.num_classes}): "
                    "pass class_labels"
                )
            temb = temb + self.label_embed(class_labels)
        elif class_labels is not None:
            raise ValueError("class_labels given to an unconditional model (num_classes=0)")
        return jax.nn.silu(temb)

    def __call__(
        self,
        x: Array,
        c_noise: Array,
        *,
        train: bool = False,
        key: Array | None = None,
        class_labels: Array | None = None,
        text: tuple[Array, Array, Array] | None = None,
    ) -> Array:
        """Score-network output of x's shape; ``key`` drives dropout when ``train``.
        ``text``: (token states (B, L, text_dim), mask (B, L), pooled (B, text_dim)) of a
        text-conditional model."""
        if x.ndim != 4 or x.shape[1:] != (self.image_size, self.image_size, self.num_channels):
            raise ValueError(
                f"expected x of shape (B, {self.image_size}, {self.image_size}, "
                f"{self.num_channels}), got {x.shape}"
            )
        c_noise = jnp.broadcast_to(jnp.asarray(c_noise, jnp.float32), (x.shape[0],))
        temb = self._temb(c_noise, class_labels, text)
        use_dropout = train and self.dropout > 0
        if use_dropout and key is None:
            raise ValueError("train=True with dropout > 0 needs a PRNG key (key=...)")

        def run_block(b: ResBlock, h: Array, temb: Array, key: Array | None) -> Array:
            return b(h, temb, key)

        def run_attn(a: AttnBlock, h: Array) -> Array:
            return a(h)

        def run_cross(c: CrossAttnBlock, h: Array, tokens: Array, mask: Array) -> Array:
            return c(h, tokens, mask)

        if self.remat == "block":
            run_block, run_attn = nnx.remat(run_block), nnx.remat(run_attn)
            run_cross = nnx.remat(run_cross)

        def block(b: ResBlock, h: Array) -> Array:
            block_key = jax.random.fold_in(key, b.key_index) if use_dropout else None
            return run_block(b, h, temb, block_key)

        def attend(a: AttnBlock, h: Array) -> Array:
            return run_attn(a, h)

        def read_text(c: CrossAttnBlock, h: Array) -> Array:
            tokens, mask, _ = text
            return run_cross(c, h, tokens.astype(self.dtype), mask)

        x = x.astype(self.dtype)

        pyramid = x if self.progressive_input != "none" else None
        hs = [self.conv_in(x)]
        for level in self.down:
            for j, b in enumerate(level.blocks):
                h = block(b, hs[-1])
                h = attend(level.attns[j], h) if len(level.attns) else h
                hs.append(read_text(level.crosses[j], h) if len(level.crosses) else h)
            if level.resample is None:
                continue
            r = level.resample
            h = block(r, hs[-1]) if isinstance(r, ResBlock) else r(hs[-1])
            if self.progressive_input == "input_skip":
                pyramid = level.pyramid_resample(pyramid)
                h = level.combine(pyramid, h)
            elif self.progressive_input == "residual":
                pyramid = self._merge(level.pyramid_resample(pyramid), h)
                h = pyramid
            hs.append(h)

        h = attend(self.mid_attn, block(self.mid_block0, hs[-1]))
        if self.mid_cross is not None:
            h = read_text(self.mid_cross, h)
        h = block(self.mid_block1, h)

        pyramid = None
        for level in self.up:
            for b in level.blocks:
                h = block(b, jnp.concatenate([h, hs.pop()], axis=-1))
            for a in level.attns:
                h = attend(a, h)
            for c in level.crosses:
                h = read_text(c, h)
            if self.progressive == "output_skip":
                out = level.pyramid_head(h)
                pyramid = out if pyramid is None else level.pyramid_resample(pyramid) + out
            elif self.progressive == "residual":
                if pyramid is None:
                    pyramid = level.pyramid_head(h)
                else:
                    pyramid = self._merge(level.pyramid_resample(pyramid), h)
                    h = pyramid
            if level.resample is not None:
                r = level.resample
                h = block(r, h) if isinstance(r, ResBlock) else r(h)

        out = pyramid if self.head is None else self.head(h)
        return out.astype(jnp.float32)

    def _merge(self, a: Array, b: Array) -> Array:
        return (a + b) / math.sqrt(2.0) if self.skip_rescale else a + b


def from_config(config: Any, rngs: nnx.Rngs) -> UNet:
    """Build a :class:`UNet` from ``config.model`` / ``config.data`` (score_sde key names)."""
    m = config.model
    return UNet(
        image_size=config.data.image_size,
        num_channels=config.data.num_channels,
        nf=m.nf,
        ch_mult=tuple(m.ch_mult),
        num_res_blocks=m.num_res_blocks,
        attn_resolutions=tuple(m.attn_resolutions),
        dropout=m.dropout,
        resamp_with_conv=m.resamp_with_conv,
        skip_rescale=m.skip_rescale,
        resblock_type=m.resblock_type,
        embedding_type=m.embedding_type,
        fourier_scale=m.get("fourier_scale", 16.0),
        init_scale=m.get("init_scale", 0.0),
        conv_impl=m.get("conv_impl", "auto"),
        num_classes=m.get("num_classes", 0),
        text_dim=m.get("text_dim", 0),
        text_attn_resolutions=tuple(m.get("text_attn_resolutions", ())),
        fir=m.get("fir", False),
        fir_kernel=tuple(m.get("fir_kernel", (1, 3, 3, 1))),
        progressive=m.get("progressive", "none"),
        progressive_input=m.get("progressive_input", "none"),
        progressive_combine=m.get("progressive_combine", "sum"),
        conv_shortcut=m.get("conv_shortcut", False),
        dtype=m.get("dtype", "float32"),
        remat=m.get("remat", "none"),
        rngs=rngs,
    )
