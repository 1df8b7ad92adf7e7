"""Adversarial losses on discriminator logits.

Every loss takes ``(real_logits (B,), fake_logits (B,))`` and returns the batch mean, a
scalar; the discriminator minimises its loss, the generator its own. The generator's
losses ignore ``real_logits`` except the relativistic one, which pairs each real example
with the fake example at the same batch position.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.nn import relu, softplus

Array = jax.Array
GanLossFn = Callable[[Array, Array], Array]

__all__ = ["LOSSES", "get_gan_loss"]


def _ns_d(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(softplus(-real_logits) + softplus(fake_logits))


def _ns_g(real_logits: Array, fake_logits: Array) -> Array:
    # -log D(G(z)) rather than log(1 - D(G(z))): strong gradients while D rejects fakes.
    del real_logits
    return jnp.mean(softplus(-fake_logits))


def _hinge_d(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(relu(1.0 - real_logits) + relu(1.0 + fake_logits))


def _hinge_g(real_logits: Array, fake_logits: Array) -> Array:
    del real_logits
    return -jnp.mean(fake_logits)


def _relativistic_d(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(softplus(fake_logits - real_logits))


def _relativistic_g(real_logits: Array, fake_logits: Array) -> Array:
    return jnp.mean(softplus(real_logits - fake_logits))


# name -> (discriminator_loss, generator_loss).
# 'relativistic' is RpGAN (Jolicoeur-Martineau 2019; Huang et al. 2024, R3GAN): comparing
# paired logits removes the mode-dropping incentive of the separable losses; R3GAN pairs
# it with R1 + R2 (see gan.penalties).
LOSSES: dict[str, tuple[GanLossFn, GanLossFn]] = {
    "ns": (_ns_d, _ns_g),
    "hinge": (_hinge_d, _hinge_g),
    "relativistic": (_relativistic_d, _relativistic_g),
}


def get_gan_loss(name: str) -> tuple[GanLossFn, GanLossFn]:
    """``(discriminator_loss, generator_loss)`` of the loss ``name`` in :data:`LOSSES`.

    Each is ``fn(real_logits (B,), fake_logits (B,)) -> scalar`` (batch mean):

    * ``'ns'``: non-saturating logistic; D: softplus(-real) + softplus(fake),
      G: softplus(-fake).
    * ``'hinge'``: D: relu(1 - real) + relu(1 + fake), G: -fake.
    * ``'relativistic'``: relativistic pairing (RpGAN); D: softplus(fake - real),
      G: softplus(real - fake).
    """
    if name not in LOSSES:
        raise ValueError(f"unknown GAN loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name]
