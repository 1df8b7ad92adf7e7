"""Neural style transfer by optimisation (Gatys, Ecker and Bethge, CVPR 2016).

An image is optimised so that a CNN's features of it match the content image's at the
content layers and the Gram matrices of the style image's at the style layers
(:mod:`style.losses`). Any feature network works: :func:`style_transfer` takes a callable
``features(images) -> {layer name: activations}`` and the names it can give (VGG-19:
``networks.vgg``, whose ``conv1_1 .. conv5_1`` / ``conv4_2`` are the paper's layers).

Pixels stay in [0, 1] through a parametrisation, not clipping: the optimiser moves ``z``
and the image is ``(1 + sin z) / 2``. L-BFGS needs this: its line search and curvature
pairs assume the objective is a smooth function of the variable it moves, which a clip
after every step breaks. Sine rather than sigmoid because its slope, ``sqrt(x (1 - x))``,
fades much more slowly near 0 and 1 than the sigmoid's ``x (1 - x)``, so saturated pixels
of a content image can still change. Adam uses the same parametrisation, so both
optimisers solve the same problem.

Each scale compiles one program that runs up to ``log_every`` optimisation steps in a
``fori_loop`` and returns the losses where it stopped; the Python loop around it reports
them (``callback``) and keeps the history.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from errors import RequestError, UserError
from style import color, images, losses

Array = jax.Array
Features = Callable[[Array], Mapping[str, Array]]

OPTIMIZERS = ("lbfgs", "adam")
INITS = ("content", "style", "noise")
# Keeps the initial z finite: arcsin(+-1) has a zero slope, a pixel stuck at its bound.
_INIT_MARGIN = 1e-3


@dataclasses.dataclass(frozen=True)
class GatysOptions:
    """What to optimise and how. The losses are relative (:mod:`style.losses`), so the
    weights do not depend on the feature network's activation scale; ``strength``
    multiplies ``style_weight``. ``steps`` is per scale. ``scales``: shorter sides of the
    output, coarse to fine, each scale's result upsampled as the next one's start; empty
    means one pass at the content image's own size. The style image is resized so that
    its shorter side is ``style_scale`` times the output's. ``learning_rate`` is Adam's,
    in units of z (about twice the pixel change per step at mid-grey); L-BFGS has a line
    search instead. ``preserve_color``: luminance-only transfer (:mod:`style.color`).

    The default layers are the paper's names. Its Caffe VGG ran the ReLUs in place, so
    what it called ``conv4_2`` was rectified: ``relu4_2`` etc. reproduce that exactly.
    """

    content_weight: float = 1.0
    style_weight: float = 1e3
    tv_weight: float = 0.0
    content_layers: tuple[str, ...] = ("conv4_2",)
    style_layers: tuple[str, ...] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1")
    style_layer_weights: tuple[float, ...] | None = None  # None: 1 / len(style_layers) each
    optimizer: str = "lbfgs"
    learning_rate: float = 0.05
    lbfgs_memory: int = 10
    init: str = "content"
    seed: int = 0  # the noise of init='noise'
    steps: int = 300
    strength: float = 1.0
    preserve_color: bool = False
    scales: tuple[int, ...] = ()
    style_scale: float = 1.0
    log_every: int = 10

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.init not in INITS:
            problems.append(f"init must be one of {INITS}, got {self.init!r}")
        weights = {
            "content_weight": self.content_weight,
            "style_weight": self.style_weight,
            "tv_weight": self.tv_weight,
            "strength": self.strength,
        }
        problems += [f"{k} must be >= 0, got {v}" for k, v in weights.items() if not v >= 0]
        if not self.style_layers:
            problems.append("style_layers is empty")
        n = len(self.style_layers)
        if self.style_layer_weights is not None and len(self.style_layer_weights) != n:
            problems.append(
                f"style_layer_weights has {len(self.style_layer_weights)} "
                f"weights for {n} style_layers"
            )
        if self.steps < 0 or self.log_every < 1 or self.lbfgs_memory < 1:
            problems.append("steps must be >= 0, log_every and lbfgs_memory >= 1")
        if not self.learning_rate > 0 or not self.style_scale > 0:
            problems.append("learning_rate and style_scale must be > 0")
        if any(s < 16 for s in self.scales) or list(self.scales) != sorted(set(self.scales)):
            problems.append(f"scales must increase, each >= 16 pixels, got {self.scales}")
        if problems:
            raise RequestError("style transfer options: " + "; ".join(problems))

    @property
    def layer_weights(self) -> dict[str, float]:
        """Style layer -> its weight in the style loss."""
        n = len(self.style_layers)
        w = self.style_layer_weights or (1.0 / n,) * n
        return dict(zip(self.style_layers, map(float, w), strict=True))

    @property
    def layers(self) -> tuple[str, ...]:
        """Every layer the losses read: what a feature function needs to compute."""
        return tuple(dict.fromkeys(self.content_layers + self.style_layers))


class LossRecord(NamedTuple):
    """The losses after ``step`` optimisation steps (counted over all scales); weighted
    ``total``, the unweighted relative ``content`` and ``style``, and ``tv``."""

    step: int
    total: float
    content: float
    style: float
    tv: float


@dataclasses.dataclass(frozen=True)
class StyleResult:
    """``image``: float32 (H, W, 3) RGB in [0, 1]; ``history``: the losses every
    ``log_every`` steps, at each scale's start and at its end; ``sizes``: (H, W) per scale."""

    image: np.ndarray
    history: list[LossRecord]
    sizes: list[tuple[int, int]]


def to_pixels(z: Array) -> Array:
    """The optimised variable -> pixels in [0, 1] (see the module doc)."""
    return 0.5 + 0.5 * jnp.sin(z)


def from_pixels(x: Array) -> Array:
    """Pixels -> a z with ``to_pixels(z) ~= x`` (within ``_INIT_MARGIN``), slope non-zero."""
    x = jnp.clip(jnp.asarray(x, jnp.float32), _INIT_MARGIN, 1.0 - _INIT_MARGIN)
    return jnp.arcsin(2.0 * x - 1.0)


def _check_layers(options: GatysOptions, layer_names: Sequence[str]) -> None:
    known = tuple(layer_names)
    for name in options.layers:
        if name not in known:
            raise RequestError(
                f"unknown layer {name!r} for this feature network; valid names: {', '.join(known)}"
            )


def _pick(feats: Mapping[str, Array], names: Sequence[str]) -> dict[str, Array]:
    missing = [n for n in names if n not in feats]
    if missing:
        raise UserError(
            f"the feature function gave no {missing[0]!r} (it gave "
            f"{', '.join(feats)}): it must compute every layer it lists"
        )
    return {n: feats[n] for n in names}


def _optimizer(options: GatysOptions) -> optax.GradientTransformationExtraArgs:
    if options.optimizer == "adam":
        return optax.adam(options.learning_rate)
    return optax.lbfgs(memory_size=options.lbfgs_memory)


def _make_programs(features: Features, options: GatysOptions) -> tuple[Callable, Callable]:
    """(targets(content, style), run(z, opt_state, targets, n)), both jitted."""
    weights = options.layer_weights
    opt = _optimizer(options)

    @jax.jit
    def targets(content: Array, style: Array) -> dict[str, Any]:
        content_feats = _pick(features(content[None]), options.content_layers)
        style_feats = _pick(features(style[None]), options.style_layers)
        return {
            "content": content_feats,
            "grams": {n: losses.gram(f)[0] for n, f in style_feats.items()},
        }

    def parts(z: Array, tgt: dict[str, Any]) -> dict[str, Array]:
        x = to_pixels(z)[None]
        feats = _pick(features(x), options.layers)
        content = sum(
            (losses.content_loss(feats[n], tgt["content"][n]) for n in options.content_layers),
            jnp.zeros(()),
        )
        content = content / max(len(options.content_layers), 1)
        style = losses.style_loss(feats, tgt["grams"], weights)
        tv = losses.total_variation(x)
        total = (
            options.content_weight * content
            + options.style_weight * options.strength * style
            + options.tv_weight * tv
        )
        return {"total": total, "content": content, "style": style, "tv": tv}

    def step(z: Array, state: Any, tgt: dict[str, Any]) -> tuple[Array, Any]:
        value_fn = lambda z: parts(z, tgt)["total"]
        if options.optimizer == "lbfgs":
            # The line search already evaluated the new point: reuse its value and grad.
            value, grad = optax.value_and_grad_from_state(value_fn)(z, state=state)
            updates, state = opt.update(grad, state, z, value=value, grad=grad, value_fn=value_fn)
        else:
            updates, state = opt.update(jax.grad(value_fn)(z), state, z)
        return optax.apply_updates(z, updates), state

    @jax.jit
    def run(z: Array, state: Any, tgt: dict[str, Any], n: Array) -> tuple[Array, Any, dict]:
        # n is traced: every chunk length (and 0, the losses at the start) shares a compile.
        z, state = jax.lax.fori_loop(0, n, lambda _, c: step(*c, tgt), (z, state))
        return z, state, parts(z, tgt)

    return targets, run


def _as_rgb(image: Array | np.ndarray, label: str) -> Array:
    rgb, _ = images.to_rgb(np.asarray(image), label)
    return jnp.asarray(rgb)


def _resize_to(image: Array, shape: tuple[int, int]) -> Array:
    if image.shape[:2] == shape:
        return image
    return jax.image.resize(image, (*shape, image.shape[-1]), method="linear", antialias=True)


def style_transfer(
    content: Array | np.ndarray,
    style: Array | np.ndarray,
    features: Features,
    layer_names: Sequence[str],
    options: GatysOptions | None = None,
    *,
    callback: Callable[[int, dict[str, float]], None] | None = None,
) -> StyleResult:
    """Paint ``content`` in the style of ``style`` (both (H, W, 3) RGB, float in [0, 1]
    or uint8; grey and alpha are converted as :func:`style.images.to_rgb` does).

    ``features(images)`` maps (1, H, W, 3) RGB in [0, 1] to a dict holding at least the
    layers of ``options.layers`` (e.g. ``lambda x: vgg(x, options.layers)``);
    ``layer_names`` are the names it can give, against which the options' layers are
    checked. ``callback(step, losses)`` is called with the losses of every history entry.
    """
    options = options or GatysOptions()
    _check_layers(options, layer_names)
    content, style = _as_rgb(content, "content image"), _as_rgb(style, "style image")
    if options.preserve_color:
        content_y = color.luminance(content)
        style = color.grey_rgb(color.match_luminance(color.luminance(style), content_y))
    # Trace the feature function once abstractly: a layer it fails to give is reported
    # here, not from inside a compiled program.
    abstract = jax.ShapeDtypeStruct((1, *content.shape), jnp.float32)
    _pick(jax.eval_shape(features, abstract), options.layers)
    targets, run = _make_programs(features, options)
    opt = _optimizer(options)
    history: list[LossRecord] = []
    sizes: list[tuple[int, int]] = []

    def record(step: int, parts: dict[str, Array]) -> None:
        values = {k: float(v) for k, v in parts.items()}
        history.append(
            LossRecord(step, values["total"], values["content"], values["style"], values["tv"])
        )
        if callback is not None:
            callback(step, values)

    x: Array | None = None
    content_s = content
    offset = 0
    for side in options.scales or (min(content.shape[:2]),):
        content_s = images.resize_shorter(content, side)
        shape = tuple(content_s.shape[:2])
        sizes.append(shape)
        style_s = images.resize_shorter(style, max(1, round(side * options.style_scale)))
        net_content = content_s
        if options.preserve_color:  # the network sees luminance only (style is grey already)
            net_content = color.grey_rgb(color.luminance(content_s))
        if x is not None:  # a finer scale starts from the coarser result
            x = jnp.clip(_resize_to(x, shape), 0.0, 1.0)
        elif options.init == "content":
            x = net_content
        elif options.init == "style":
            x = _resize_to(style_s, shape)
        else:
            x = jnp.asarray(
                np.random.default_rng(options.seed).uniform(size=(*shape, 3)), jnp.float32
            )
        tgt = targets(net_content, style_s)
        z = from_pixels(x)
        state = opt.init(z)
        z, state, parts = run(z, state, tgt, 0)
        record(offset, parts)
        done = 0
        while done < options.steps:
            n = min(options.log_every, options.steps - done)
            z, state, parts = run(z, state, tgt, n)
            done += n
            record(offset + done, parts)
        offset += options.steps
        x = to_pixels(z)
    if options.preserve_color:
        x = color.luminance_only_transfer(content_s, x)
    return StyleResult(np.asarray(x, np.float32), history, sizes)
