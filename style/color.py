"""Colour for style transfer: RGB <-> YIQ, and Gatys et al.'s luminance-only transfer
("Preserving Color in Neural Artistic Style Transfer", 2016), without histograms.

Luminance-only transfer runs the optimisation on luminance images (Y repeated on R, G and
B), the style's luminance first given the content's mean and standard deviation, then
puts the result's luminance together with the content's chroma (I, Q).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

# NTSC YIQ. The I and Q rows sum to zero (grey has no chroma) and the Y row to one, so the
# inverse's Y column is exactly (1, 1, 1): changing Y moves R, G and B alike, which is
# what lets recombine() clamp Y alone to stay in gamut.
RGB_TO_YIQ = np.array(
    [
        [0.299, 0.587, 0.114],
        [0.595716, -0.274453, -0.321263],
        [0.211456, -0.522591, 0.311135],
    ]
)
YIQ_TO_RGB = np.linalg.inv(RGB_TO_YIQ)


def rgb_to_yiq(rgb: Array) -> Array:
    """(..., 3) RGB -> (..., 3) YIQ (Y in [0, 1] for RGB in [0, 1])."""
    return jnp.asarray(rgb, jnp.float32) @ jnp.asarray(RGB_TO_YIQ.T, jnp.float32)


def yiq_to_rgb(yiq: Array) -> Array:
    """(..., 3) YIQ -> (..., 3) RGB (not clipped)."""
    return jnp.asarray(yiq, jnp.float32) @ jnp.asarray(YIQ_TO_RGB.T, jnp.float32)


def luminance(rgb: Array) -> Array:
    """(..., 3) RGB -> (...) luminance Y."""
    return rgb_to_yiq(rgb)[..., 0]


def grey_rgb(y: Array) -> Array:
    """(...) luminance -> (..., 3) grey RGB image with that luminance."""
    return jnp.repeat(jnp.asarray(y, jnp.float32)[..., None], 3, axis=-1)


def match_luminance(y: Array, reference: Array) -> Array:
    """``y`` shifted and scaled to ``reference``'s mean and standard deviation, clipped
    to [0, 1]: a style image's luminance made comparable to the content's (Gatys et al.
    use this instead of full histogram matching)."""
    y = jnp.asarray(y, jnp.float32)
    reference = jnp.asarray(reference, jnp.float32)
    scale = jnp.std(reference) / (jnp.std(y) + 1e-6)
    return jnp.clip((y - jnp.mean(y)) * scale + jnp.mean(reference), 0.0, 1.0)


def recombine(content_rgb: Array, y: Array) -> Array:
    """RGB with luminance ``y`` and exactly the content's chroma (I, Q).

    Where the new luminance with the content's chroma falls outside the RGB cube, Y is
    clamped per pixel to the range that keeps all three channels in [0, 1] (a range that
    holds the content's own Y, so it is never empty) rather than clipping R, G, B, which
    would change the chroma.
    """
    yiq = rgb_to_yiq(content_rgb)
    chroma = yiq.at[..., 0].set(0.0)
    offset = yiq_to_rgb(chroma)  # rgb = y + offset, channel by channel
    low = jnp.max(-offset, axis=-1)
    high = jnp.min(1.0 - offset, axis=-1)
    y = jnp.clip(jnp.asarray(y, jnp.float32), low, jnp.maximum(low, high))
    # The clip only takes off float32 rounding (~1e-7) at the cube's faces.
    return jnp.clip(yiq_to_rgb(yiq.at[..., 0].set(y)), 0.0, 1.0)


def luminance_only_transfer(content_rgb: Array, stylised_rgb: Array) -> Array:
    """The stylised image's luminance with the content's chroma (:func:`recombine`)."""
    return recombine(content_rgb, luminance(stylised_rgb))
