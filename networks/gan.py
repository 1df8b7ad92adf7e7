"""GAN generators and discriminators (NHWC), built from :mod:`networks.layers`.

Two pairs, both for square images whose side is ``4 * 2**k`` with k >= 1 (8, 16, 32, ...):

* ``'dcgan'``: DCGAN-style (Radford et al. 2016). G projects z to 4x4, then k stages of
  nearest upsampling + 3x3 conv halving the channels; D is k stride-2 3x3 convs doubling
  them (both capped at 8x the base width), LeakyReLU(0.2), no normalisation.
* ``'resnet'``: SNGAN's residual networks (Miyato et al. 2018), constant width as in their
  CIFAR models; D has ``k + 1`` blocks (the first one "optimised"), G has ``k``.

``G(z, *, class_labels=None, train=False) -> images (B, H, W, C) in [-1, 1]``;
``D(x, *, class_labels=None, train=False) -> logits (B,)``. With ``spectral_norm=True``
D's every conv, dense and projection embedding is spectrally normalised, and
``train=True`` advances their power iterations (state of type :class:`NetState`).
Class conditioning: G concatenates a learned label embedding to z; D is a projection
discriminator (Miyato & Koyama 2018): logit = dense(phi) + <embed(y), phi>.

G normalises with GroupNorm, not batch norm: batch norm needs running statistics (state
updated by every train step and swapped in at sampling), makes one sample's output depend
on the rest of its batch, and under data parallelism needs a cross-device reduction.
GroupNorm is per sample, so G is a pure function of its parameters.

Precision: ``dtype`` ('float32' | 'bfloat16') is the compute dtype of the feature maps;
parameters, spectral norm's power iteration and sigma stay float32, GroupNorm statistics
are float32, G's images and D's logits leave as float32 (D's projection head runs in
float32: it is a few dot products). ``remat='block'`` (ResNet pair only: DCGAN has no
blocks) recomputes each GBlock / DBlock in the backward pass.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from networks.layers import (
    Conv1x1,
    Conv3x3,
    Dense,
    Embed,
    GroupNorm,
    Upsample,
    compute_dtype,
    downsample_2d,
    upsample_2d,
)
from networks.spectral_norm import NetState, SpectralNorm
from networks.unet import REMAT

Array = jax.Array

# SNGAN initialises residual-branch convs with Xavier-uniform gain sqrt(2) (ReLU follows)
# and shortcuts with gain 1; layers.default_init(scale) is Xavier-uniform with gain^2 = scale.
RESIDUAL_INIT = 2.0


def num_stages(image_size: int) -> int:
    """k such that ``image_size == 4 * 2**k``; ValueError unless k >= 1."""
    if image_size < 8 or image_size & (image_size - 1):
        raise ValueError(
            f"GAN networks need image_size = 4 * 2**k with k >= 1 (8, 16, 32, 64, ...), "
            f"got {image_size}"
        )
    return image_size.bit_length() - 3


def _check_labels(num_classes: int, class_labels: Array | None, batch: int) -> None:
    if num_classes == 0 and class_labels is not None:
        raise ValueError("class_labels given to an unconditional network (num_classes=0)")
    if num_classes > 0 and class_labels is None:
        raise ValueError(
            f"this network is class-conditional (num_classes={num_classes}): pass class_labels"
        )
    if class_labels is not None and jnp.shape(class_labels) != (batch,):
        raise ValueError(f"class_labels must have shape ({batch},), got {jnp.shape(class_labels)}")


def _check_remat(remat: str) -> None:
    if remat not in REMAT:
        raise ValueError(f"model.remat must be one of {REMAT}, got {remat!r}")


def _maybe_sn(layer: Any, enabled: bool, rngs: nnx.Rngs) -> Any:
    return SpectralNorm(layer, rngs=rngs) if enabled else layer


def _apply(layer: Any, x: Array, train: bool) -> Array:
    """Plain layers ignore ``train``; spectrally normalised ones update ``u`` when set."""
    return layer(x, train=train) if isinstance(layer, SpectralNorm) else layer(x)


class LatentInput(nnx.Module):
    """G's input: [z, embed(label)] -> dense -> (B, 4, 4, channels)."""

    def __init__(self, latent_dim: int, channels: int, *, num_classes: int, rngs: nnx.Rngs):
        self.latent_dim = latent_dim
        self.channels = channels
        self.num_classes = num_classes
        # The embedding gets z's width, so the label weighs as much as the noise at first.
        self.label_embed = Embed(num_classes, latent_dim, rngs=rngs) if num_classes else None
        in_dim = 2 * latent_dim if num_classes else latent_dim
        self.dense = Dense(in_dim, 16 * channels, rngs=rngs)

    def __call__(self, z: Array, class_labels: Array | None) -> Array:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"expected z of shape (B, {self.latent_dim}), got {z.shape}")
        _check_labels(self.num_classes, class_labels, z.shape[0])
        if self.label_embed is not None:
            # The table is float32; it meets z in z's (compute) dtype.
            z = jnp.concatenate([z, self.label_embed(class_labels).astype(z.dtype)], axis=-1)
        return self.dense(z).reshape(z.shape[0], 4, 4, self.channels)


class ProjectionHead(nnx.Module):
    """D's output: dense(phi) (+ <embed(y), phi> when conditional), phi (B, dim) -> (B,)."""

    def __init__(self, dim: int, *, num_classes: int, spectral_norm: bool, rngs: nnx.Rngs):
        self.num_classes = num_classes
        self.dense = _maybe_sn(Dense(dim, 1, rngs=rngs), spectral_norm, rngs)
        self.label_embed = (
            _maybe_sn(Embed(num_classes, dim, rngs=rngs), spectral_norm, rngs)
            if num_classes
            else None
        )

    def __call__(self, phi: Array, class_labels: Array | None, *, train: bool) -> Array:
        """Float32 logits: phi is cast up, so the head is a float32 dot product."""
        _check_labels(self.num_classes, class_labels, phi.shape[0])
        phi = phi.astype(jnp.float32)
        logits = _apply(self.dense, phi, train)[:, 0]
        if self.label_embed is not None:
            logits = logits + jnp.sum(_apply(self.label_embed, class_labels, train) * phi, -1)
        return logits


def _check_images(x: Array, image_size: int, num_channels: int) -> None:
    if x.ndim != 4 or x.shape[1:] != (image_size, image_size, num_channels):
        raise ValueError(
            f"expected x of shape (B, {image_size}, {image_size}, {num_channels}), got {x.shape}"
        )


# ----------------------------------------------------------------------------------------
# DCGAN


class _ConvNormReLU(nnx.Module):
    """3x3 conv (same channels), GroupNorm, ReLU: DCGAN G's extra convs of a stage."""

    def __init__(self, channels: int, conv_impl: str, rngs: nnx.Rngs):
        self.conv = Conv3x3(channels, channels, impl=conv_impl, rngs=rngs)
        self.norm = GroupNorm(channels)

    def __call__(self, x: Array) -> Array:
        return jax.nn.relu(self.norm(self.conv(x)))


class DCGANGenerator(nnx.Module):
    """z -> dense 4x4 -> k x [upsample, conv, GroupNorm, ReLU, (conv, GroupNorm, ReLU) x
    (convs_per_stage - 1)] -> conv -> tanh."""

    def __init__(
        self,
        *,
        latent_dim: int,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        convs_per_stage: int = 1,
        conv_impl: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        k = num_stages(image_size)
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage}")
        self.dtype = compute_dtype(dtype)
        chs = [nf * min(2 ** (k - i), 8) for i in range(k + 1)]  # 4x4, 8x8, ..., full size
        self.input = LatentInput(latent_dim, chs[0], num_classes=num_classes, rngs=rngs)
        self.norm_in = GroupNorm(chs[0])
        self.ups = nnx.List(
            [Upsample(chs[i], chs[i + 1], with_conv=True, impl=conv_impl, rngs=rngs)
             for i in range(k)]
        )  # fmt: skip
        self.norms = nnx.List([GroupNorm(c) for c in chs[1:]])
        self.extras = nnx.List(  # per stage, the convs after its upsampling one
            [nnx.List([_ConvNormReLU(c, conv_impl, rngs) for _ in range(convs_per_stage - 1)])
             for c in chs[1:]]
        )  # fmt: skip
        self.conv_out = Conv3x3(nf, num_channels, impl=conv_impl, rngs=rngs)

    def __call__(
        self, z: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 images (B, H, W, C) in [-1, 1]; ``train`` changes nothing (no batch
        statistics)."""
        h = jax.nn.relu(self.norm_in(self.input(z.astype(self.dtype), class_labels)))
        for up, norm, extras in zip(self.ups, self.norms, self.extras, strict=True):
            h = jax.nn.relu(norm(up(h)))
            for layer in extras:
                h = layer(h)
        return jnp.tanh(self.conv_out(h).astype(jnp.float32))


class DCGANDiscriminator(nnx.Module):
    """conv -> k x [stride-2 conv, (conv) x (convs_per_stage - 1)], LeakyReLU(0.2) after
    each, flatten -> projection head."""

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        convs_per_stage: int = 1,
        conv_impl: str = "auto",
        dtype: str = "float32",
        rngs: nnx.Rngs,
    ):
        k = num_stages(image_size)
        if convs_per_stage < 1:
            raise ValueError(f"convs_per_stage must be at least 1, got {convs_per_stage}")
        self.dtype = compute_dtype(dtype)
        self.image_size = image_size
        self.num_channels = num_channels
        chs = [nf * min(2**i, 8) for i in range(k + 1)]  # full size, ..., 4x4

        def conv(cin: int, cout: int, stride: int) -> Any:
            layer = Conv3x3(cin, cout, stride=stride, impl=conv_impl, rngs=rngs)
            return _maybe_sn(layer, spectral_norm, rngs)

        self.conv_in = conv(num_channels, chs[0], 1)
        self.convs = nnx.List()
        for i in range(k):  # the stride-2 conv, then convs_per_stage - 1 at the new size
            self.convs.append(conv(chs[i], chs[i + 1], 2))
            for _ in range(convs_per_stage - 1):
                self.convs.append(conv(chs[i + 1], chs[i + 1], 1))
        self.head = ProjectionHead(
            16 * chs[-1], num_classes=num_classes, spectral_norm=spectral_norm, rngs=rngs
        )

    def __call__(
        self, x: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 logits (B,); ``train=True`` advances the spectral-norm power iterations."""
        _check_images(x, self.image_size, self.num_channels)
        _check_labels(self.head.num_classes, class_labels, x.shape[0])  # before any compute
        h = jax.nn.leaky_relu(_apply(self.conv_in, x.astype(self.dtype), train), 0.2)
        for conv in self.convs:
            h = jax.nn.leaky_relu(_apply(conv, h, train), 0.2)
        return self.head(h.reshape(h.shape[0], -1), class_labels, train=train)


# ----------------------------------------------------------------------------------------
# ResNet (SNGAN)


class GBlock(nnx.Module):
    """GroupNorm-ReLU-up-conv-GroupNorm-ReLU-conv, plus a 1x1-conv upsampled shortcut."""

    def __init__(self, in_ch: int, out_ch: int, *, conv_impl: str, rngs: nnx.Rngs):
        self.norm0 = GroupNorm(in_ch)
        self.conv0 = Conv3x3(in_ch, out_ch, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
        self.norm1 = GroupNorm(out_ch)
        self.conv1 = Conv3x3(out_ch, out_ch, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
        self.skip = Conv1x1(in_ch, out_ch, rngs=rngs)

    def __call__(self, x: Array) -> Array:
        h = self.conv0(upsample_2d(jax.nn.relu(self.norm0(x))))
        h = self.conv1(jax.nn.relu(self.norm1(h)))
        # Nearest upsampling commutes with a 1x1 conv: convolve at the lower resolution.
        return h + upsample_2d(self.skip(x))


class DBlock(nnx.Module):
    """ReLU-conv-ReLU-conv(-avgpool) plus a shortcut (1x1 conv when shape changes).

    ``optimised`` is SNGAN's first block: no pre-activation (its input is the image).
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        downsample: bool,
        optimised: bool = False,
        spectral_norm: bool,
        conv_impl: str,
        rngs: nnx.Rngs,
    ):
        self.downsample = downsample
        self.optimised = optimised

        def conv(cin: int, cout: int) -> Any:
            layer = Conv3x3(cin, cout, init_scale=RESIDUAL_INIT, impl=conv_impl, rngs=rngs)
            return _maybe_sn(layer, spectral_norm, rngs)

        self.conv0 = conv(in_ch, out_ch)
        self.conv1 = conv(out_ch, out_ch)
        self.skip = (
            _maybe_sn(Conv1x1(in_ch, out_ch, rngs=rngs), spectral_norm, rngs)
            if in_ch != out_ch or downsample
            else None
        )

    def __call__(self, x: Array, *, train: bool) -> Array:
        h = x if self.optimised else jax.nn.relu(x)
        h = _apply(self.conv1, jax.nn.relu(_apply(self.conv0, h, train)), train)
        # Average pooling commutes with a 1x1 conv, so SNGAN's two shortcut orders (pool
        # then conv in the optimised block, conv then pool elsewhere) are one: pool first.
        s = downsample_2d(x) if self.downsample else x
        if self.skip is not None:
            s = _apply(self.skip, s, train)
        return (downsample_2d(h) if self.downsample else h) + s


class ResNetGenerator(nnx.Module):
    """z -> dense 4x4 -> ``num_blocks`` upsampling GBlocks -> GroupNorm-ReLU-conv -> tanh."""

    def __init__(
        self,
        *,
        latent_dim: int,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_remat(remat)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.num_blocks = num_stages(image_size)
        self.input = LatentInput(latent_dim, nf, num_classes=num_classes, rngs=rngs)
        self.blocks = nnx.List(
            [GBlock(nf, nf, conv_impl=conv_impl, rngs=rngs) for _ in range(self.num_blocks)]
        )
        self.norm_out = GroupNorm(nf)
        self.conv_out = Conv3x3(nf, num_channels, impl=conv_impl, rngs=rngs)

    def __call__(
        self, z: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 images (B, H, W, C) in [-1, 1]; ``train`` changes nothing (no batch
        statistics)."""

        def run(block: GBlock, h: Array) -> Array:
            return block(h)

        if self.remat == "block":
            run = nnx.remat(run)
        h = self.input(z.astype(self.dtype), class_labels)
        for block in self.blocks:
            h = run(block, h)
        return jnp.tanh(self.conv_out(jax.nn.relu(self.norm_out(h))).astype(jnp.float32))


class ResNetDiscriminator(nnx.Module):
    """Optimised DBlock + downsampling DBlocks to 4x4, one more DBlock, ReLU, sum pool, head.

    ``num_blocks`` = k + 1 for ``image_size = 4 * 2**k`` (32x32: 4 blocks, as SNGAN's CIFAR D).
    """

    def __init__(
        self,
        *,
        image_size: int,
        num_channels: int,
        nf: int,
        num_classes: int = 0,
        spectral_norm: bool = False,
        conv_impl: str = "auto",
        dtype: str = "float32",
        remat: str = "none",
        rngs: nnx.Rngs,
    ):
        _check_remat(remat)
        k = num_stages(image_size)
        self.dtype = compute_dtype(dtype)
        self.remat = remat
        self.image_size = image_size
        self.num_channels = num_channels
        self.num_blocks = k + 1
        opts = dict(spectral_norm=spectral_norm, conv_impl=conv_impl, rngs=rngs)
        blocks = [DBlock(num_channels, nf, downsample=True, optimised=True, **opts)]
        blocks += [DBlock(nf, nf, downsample=True, **opts) for _ in range(k - 1)]
        blocks.append(DBlock(nf, nf, downsample=False, **opts))
        self.blocks = nnx.List(blocks)
        self.head = ProjectionHead(
            nf, num_classes=num_classes, spectral_norm=spectral_norm, rngs=rngs
        )

    def __call__(
        self, x: Array, *, class_labels: Array | None = None, train: bool = False
    ) -> Array:
        """Float32 logits (B,); ``train=True`` advances the spectral-norm power iterations."""
        _check_images(x, self.image_size, self.num_channels)
        _check_labels(self.head.num_classes, class_labels, x.shape[0])  # before any compute

        # `train` is closed over: a Python bool, not an argument for remat to trace.
        def run(block: DBlock, h: Array) -> Array:
            return block(h, train=train)

        if self.remat == "block":
            run = nnx.remat(run)
        h = x.astype(self.dtype)
        for block in self.blocks:
            h = run(block, h)
        # Sum pooling in float32: a sum of H*W bfloat16 terms would lose the small ones.
        phi = jnp.sum(jax.nn.relu(h).astype(jnp.float32), axis=(1, 2))
        return self.head(phi, class_labels, train=train)


# ----------------------------------------------------------------------------------------

GAN_NETWORKS: dict[str, tuple[type[nnx.Module], type[nnx.Module]]] = {
    "dcgan": (DCGANGenerator, DCGANDiscriminator),
    "resnet": (ResNetGenerator, ResNetDiscriminator),
}


def from_config(config: Any, rngs: nnx.Rngs) -> tuple[nnx.Module, nnx.Module]:
    """(generator, discriminator) named by ``config.model.name`` (a :data:`GAN_NETWORKS` key).

    Reads ``model.latent_dim``, ``.nf`` (G width), ``.d_nf`` (D width), ``.spectral_norm``
    (D; default False), ``.num_classes`` (default 0), ``.convs_per_stage`` (DCGAN's G
    and D; default 1), ``.conv_impl`` (default 'auto'), ``.dtype`` (default 'float32'),
    ``.remat`` (ResNet pair; default 'none') and ``data.image_size`` / ``.num_channels``.
    """
    m, data = config.model, config.data
    if m.name not in GAN_NETWORKS:
        raise ValueError(f"unknown GAN model.name {m.name!r}; known: {sorted(GAN_NETWORKS)}")
    gen_cls, disc_cls = GAN_NETWORKS[m.name]
    common = dict(
        image_size=data.image_size,
        num_channels=data.num_channels,
        num_classes=m.get("num_classes", 0),
        conv_impl=m.get("conv_impl", "auto"),
        dtype=m.get("dtype", "float32"),
        rngs=rngs,
    )
    own: dict[str, Any] = {}  # what only one pair takes
    if m.name == "dcgan":  # the ResNet pair's depth is fixed by SNGAN's design
        own["convs_per_stage"] = m.get("convs_per_stage", 1)
        if m.get("remat", "none") != "none":
            raise ValueError(f"model.remat={m.remat!r} needs residual blocks; DCGAN has none")
    else:
        own["remat"] = m.get("remat", "none")
    generator = gen_cls(latent_dim=m.latent_dim, nf=m.nf, **own, **common)
    discriminator = disc_cls(
        nf=m.d_nf, spectral_norm=m.get("spectral_norm", False), **own, **common
    )
    return generator, discriminator


__all__ = [
    "GAN_NETWORKS",
    "DCGANDiscriminator",
    "DCGANGenerator",
    "NetState",
    "ResNetDiscriminator",
    "ResNetGenerator",
    "from_config",
    "num_stages",
]
