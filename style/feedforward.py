"""Feed-forward arbitrary style transfer (AdaIN; Huang and Belongie, ICCV 2017): one
forward pass turns any content image into any style, where :mod:`style.gatys` optimises
each image.

A frozen pretrained encoder ``f`` (a :mod:`style.feature_nets` network) reads the content
image ``c`` and the style image ``s``; AdaIN gives the content features the style
features' channel-wise mean and standard deviation, ``t = AdaIN(f(c), f(s))`` at one layer
(``relu4_1``); a trained decoder ``g`` (:class:`networks.adain.Decoder`) turns ``t`` back
into an image. ``alpha`` trades content for style at inference: ``g(alpha t + (1 - alpha)
f(c))``, so ``alpha = 0`` is the decoder of the content's own features.

The decoder is trained (``model.family='style_adain'``, ``training/families/
style_adain.py``) to minimise :func:`adain_losses`: the content loss ``mse(f(g(t)), t)``
at the AdaIN layer plus ``style_weight`` times the style loss, the sum over the style
layers ``phi_i`` of ``mse(mu(phi_i(g(t))), mu(phi_i(s))) + mse(sigma(phi_i(g(t))),
sigma(phi_i(s)))`` (the paper's mean/std matching, as its reference implementation
computes it: squared errors averaged over channels and the batch).

Everything here is a pure function of an ``encode(images, layers) -> {layer: features}``
callable and a ``decode(features) -> images`` callable; a trained run stylizes through
``training.stylize.load(workdir)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from errors import UserError
from networks import adain as adain_net
from style import feature_nets

Array = jax.Array
Encode = Callable[[Array, Sequence[str]], Mapping[str, Array]]
Decode = Callable[[Array], Array]

DEFAULT_CONTENT_LAYER = "relu4_1"
DEFAULT_STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


def vgg_shaped_network(name: str, widths: Sequence[int], convs: Sequence[int], *,
                       seed: int = 0, pooling: str = "max") -> feature_nets.FeatureNetwork:
    """A feature network ``name`` of a :class:`networks.adain.VGGShaped` CNN with random
    weights drawn from ``seed`` and no weights file: what tests and timings register
    (:func:`style.feature_nets.register`) in place of a pretrained encoder."""
    widths, convs = tuple(widths), tuple(convs)

    def load(weights: str | None) -> nnx.Module:
        if weights:
            raise UserError(f"style.vgg_weights is a weights file; {name} takes none "
                            "(leave it '')")
        return adain_net.VGGShaped(widths, convs, pooling=pooling, rngs=nnx.Rngs(seed))

    def abstract(weights: str | None) -> nnx.Module:
        return nnx.eval_shape(lambda: load(weights))

    names = tuple(abstract(None).names)
    return feature_nets.FeatureNetwork(
        name, names, (names[-1],), names[:1], needs_weights=False, load=load,
        abstract=abstract, about=f"VGG-shaped, widths {widths}, random weights")


def check_layers(layer_names: Sequence[str], content_layer: str,
                 style_layers: Sequence[str]) -> str:
    """The deepest of the AdaIN layer and the style layers (all of which the encoder must
    have: UserError naming one it lacks)."""
    layer_names = tuple(layer_names)
    if not style_layers:
        raise UserError("style.style_layers names no layer")
    for key, names in (("content_layer", (content_layer,)), ("style_layers", style_layers)):
        unknown = [name for name in names if name not in layer_names]
        if unknown:
            raise UserError(f"style.{key}: the encoder has no layer {unknown[0]!r}; its "
                            f"layers: {', '.join(layer_names)}")
    return max((content_layer, *style_layers), key=layer_names.index)


# ----------------------------------------------------------------------------------------
# The forward pass and the losses


def blend(content_features: Array, style_features: Array, alpha: float | Array = 1.0) -> Array:
    """``alpha AdaIN(c, s) + (1 - alpha) c``: the decoder's input. ``alpha``: a scalar or
    one per image ((N,))."""
    alpha = jnp.asarray(alpha, jnp.float32)
    if alpha.ndim == 1:
        alpha = alpha[:, None, None, None]
    target = adain_net.adain(content_features, style_features)
    return alpha * target + (1.0 - alpha) * content_features


def pad_to_multiple(images: Array, multiple: int) -> Array:
    """(N, H, W, C) padded at the bottom and right by reflection so that H and W are
    multiples of ``multiple``."""
    h, w = images.shape[1:3]
    pad_h, pad_w = -h % multiple, -w % multiple
    if not pad_h and not pad_w:
        return images
    return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="reflect")


def as_batch(images: Array, what: str) -> Array:
    """(H, W, 3) or (N, H, W, 3) float images -> (N, H, W, 3) float32."""
    images = jnp.asarray(images, jnp.float32)
    if images.ndim == 3:
        images = images[None]
    if images.ndim != 4 or images.shape[-1] != 3:
        raise UserError(f"the {what} image must be RGB (H, W, 3) or (N, H, W, 3), got "
                        f"{tuple(images.shape)}")
    return images


def stylize(encode: Encode, decode: Decode, content: Array, style: Array,
            alpha: float | Array = 1.0, *, layer: str = DEFAULT_CONTENT_LAYER,
            multiple: int = 8) -> Array:
    """``content`` in the style of ``style``, both RGB in [0, 1], (H, W, 3) or (N, H, W,
    3) (one style for every content image, or one each), in one forward pass: float32
    images of the content's shape in [0, 1].

    Any sizes: the content is padded by reflection to a multiple of ``multiple`` (the
    encoder's downsampling, :func:`networks.adain.downsampling`) and the result cropped
    back; the style is read only through its features' mean and std.
    """
    single = jnp.ndim(content) == 3
    content, style = as_batch(content, "content"), as_batch(style, "style")
    if style.shape[0] not in (1, content.shape[0]):
        raise UserError(f"{style.shape[0]} style images for {content.shape[0]} content "
                        "images: give one, or one per content image")
    h, w = content.shape[1:3]
    padded = pad_to_multiple(content, multiple)
    c_feat = encode(padded, [layer])[layer]
    s_feat = encode(style, [layer])[layer]
    out = jnp.clip(decode(blend(c_feat, s_feat, alpha))[:, :h, :w], 0.0, 1.0)
    return out[0] if single else out


def _mse(a: Array, b: Array) -> Array:
    return jnp.mean(jnp.square(a - b))


def adain_losses(encode: Encode, decoded: Array, target: Array,
                 style_features: Mapping[str, Array], *, content_layer: str,
                 style_layers: Sequence[str]) -> tuple[Array, Array]:
    """(content loss, style loss) of ``decoded`` = g(t) (N, H, W, 3): ``mse(f(g(t)), t)``
    at ``content_layer`` (``target`` = t) and the sum over ``style_layers`` of the squared
    errors of the channel-wise means and standard deviations against ``style_features``
    (the style images' features at those layers)."""
    layers = tuple(dict.fromkeys((content_layer, *style_layers)))
    out = encode(decoded, layers)
    content_loss = _mse(out[content_layer], target)
    style_loss = jnp.zeros((), jnp.float32)
    for name in style_layers:
        mean, std = adain_net.mean_std(out[name])
        s_mean, s_std = adain_net.mean_std(style_features[name])
        style_loss = style_loss + _mse(mean, s_mean) + _mse(std, s_std)
    return content_loss, style_loss


def training_losses(encode: Encode, decode: Decode, content: Array, style: Array, *,
                    content_layer: str = DEFAULT_CONTENT_LAYER,
                    style_layers: Sequence[str] = DEFAULT_STYLE_LAYERS,
                    style_weight: float = 10.0) -> dict[str, Array]:
    """The AdaIN objective on a batch of (content, style) pairs of one size (N, H, W, 3)
    in [0, 1]: {'loss', 'content_loss', 'style_loss'}, with loss = content_loss +
    style_weight * style_loss (alpha 1, as in training)."""
    layers = tuple(dict.fromkeys((content_layer, *style_layers)))
    both = encode(jnp.concatenate([content, style]), layers)
    n = content.shape[0]
    c_feat = both[content_layer][:n]
    s_feats = {name: jax.lax.stop_gradient(both[name][n:]) for name in layers}
    target = jax.lax.stop_gradient(adain_net.adain(c_feat, s_feats[content_layer]))
    content_loss, style_loss = adain_losses(encode, decode(target), target, s_feats,
                                            content_layer=content_layer,
                                            style_layers=style_layers)
    return {"loss": content_loss + style_weight * style_loss,
            "content_loss": content_loss, "style_loss": style_loss}
