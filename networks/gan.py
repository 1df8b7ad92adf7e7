"""GAN generators and discriminators (NHWC): the registry and :func:`from_config`.

Two pairs, both for square images whose side is ``4 * 2**k`` with k >= 1 (8, 16, 32, ...):

* ``'dcgan'``: DCGAN-style (Radford et al. 2016). G projects z to 4x4, then k stages of
  nearest upsampling + 3x3 conv halving the channels; D is k stride-2 3x3 convs doubling
  them (both capped at 8x the base width), LeakyReLU(0.2), no normalisation.
* ``'resnet'``: SNGAN's residual networks (Miyato et al. 2018), constant width as in their
  CIFAR models; D has ``k + 1`` blocks (the first one "optimised"), G has ``k``.

``G(z, *, class_labels=None, train=False) -> images (B, H, W, C) in [-1, 1]``;
``D(x, *, class_labels=None, train=False) -> logits (B,)``. With ``spectral_norm=True``
D's every conv, dense and projection embedding is spectrally normalised, and
``train=True`` advances their power iterations (state of type
:class:`networks.spectral_norm.NetState`).
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

Layout: the DCGAN pair is in :mod:`networks.gan_dcgan`, the ResNet pair in
:mod:`networks.gan_resnet`, and what they share (latent input, projection head, checks) in
:mod:`networks.gan_common`.
"""

from __future__ import annotations

from typing import Any

from flax import nnx

from networks.gan_dcgan import DCGANDiscriminator, DCGANGenerator
from networks.gan_resnet import ResNetDiscriminator, ResNetGenerator

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


__all__ = ["GAN_NETWORKS", "from_config"]
