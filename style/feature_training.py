"""The recipe that trains style_cnn (:mod:`networks.style_cnn`), the offline default
feature network of style transfer, and rebuilds its pinned weights:

    python -m style.feature_training --out style/style_cnn.npz

The objective makes the features sensitive to colour and texture, which is what Gram
matrices read: each training photo (the pictures of :func:`style.images.available_names`
but :data:`HELD_OUT`) is resized to a 256-pixel square and cut into a 2x2 grid of regions,
and every region is a class (16 photos x 4 = 64 classes). A sample is a random square crop
around a point of its region, 40 to 128 source pixels wide (log-uniform: random scale),
resampled to 64x64 and flipped left-right at random; the network must say which region of
which photo it came from. The classifier sees only *statistics* of the style layers, the
per-channel mean and standard deviation of each of ``relu1_1 .. relu5_1`` over the crop
(orderless, as a Gram matrix is), through one dense layer: what the features must learn is
a description of a patch's colours and textures that identifies it, invariant to where in
the crop things are. Regions rather than whole photos as classes make that harder: the
four corners of one picture often share a palette and differ in texture.

Held out (never seen in training, used by ``bench/style_features.py`` as content and
style images): :data:`HELD_OUT`, a cat photo, a still life, a deep-sky image and a
microscope stain.

Deterministic: the initialisation, every batch (drawn on the device from the seed and the
step number) and the data order depend only on :class:`Recipe`, and the whole training is
one compiled program, so the same machine rebuilds the same bytes. Another CPU model may
round differently; that is why the result is pinned (:mod:`style.pretrained`).
The classifier head is thrown away; only the network's parameters are kept.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from errors import UserError
from networks.layers import Dense
from networks.style_cnn import (
    DEFAULT_STYLE_LAYERS,
    LAYER_NAMES,
    StyleCNN,
    avg_pool,
    layer_channels,
)
from style import images, pretrained

HELD_OUT: tuple[str, ...] = ("chelsea", "coffee", "hubble_deep_field", "immunohistochemistry")
TRAIN_NAMES: tuple[str, ...] = tuple(n for n in images.available_names() if n not in HELD_OUT)
# Keeps the standard deviation of a dead (all-zero) channel differentiable.
_STD_EPS = 1e-5
_BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Everything that decides the trained weights (stored in the weights file)."""

    seed: int = 0
    steps: int = 800
    batch_size: int = 32
    learning_rate: float = 2e-3
    warmup_steps: int = 50
    weight_decay: float = 1e-4
    image_size: int = 256  # each photo: shorter side resized to this, centre square crop
    crop: int = 64  # the network's input side
    crop_min: int = 40  # a crop's side in the photo's pixels, log-uniform in [min, max]
    crop_max: int = 128
    grid: int = 2  # each photo is cut into grid x grid regions, one class each
    fold_crops: int = 512  # the crops whose statistics the normalisation is folded with
    photos: tuple[str, ...] = TRAIN_NAMES

    def __post_init__(self) -> None:
        unknown = [n for n in self.photos if n not in images.available_names()]
        if unknown or not self.photos:
            raise UserError(f"recipe photos: unknown {unknown} (or none); names: "
                            f"{', '.join(images.available_names())}")
        if not 1 <= self.crop_min <= self.crop_max <= self.image_size:
            raise UserError("recipe: need 1 <= crop_min <= crop_max <= image_size")
        if self.steps < 0 or self.batch_size < 1 or self.grid < 1:
            raise UserError("recipe: steps must be >= 0, batch_size and grid >= 1")

    @property
    def num_classes(self) -> int:
        return len(self.photos) * self.grid**2

    def as_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v
                for k, v in dataclasses.asdict(self).items()}


def normalised_features(
    net: StyleCNN, x: jax.Array, layers: tuple[str, ...]
) -> tuple[dict[str, jax.Array], dict[str, tuple[jax.Array, jax.Array]]]:
    """``net``'s forward pass with batch normalisation (no scale or shift) after every
    convolution: the activations of ``layers`` and, per convolution, the mean and
    variance of its output over the batch and the positions, which it was normalised by.
    """
    wanted = set(layers)
    last = max(LAYER_NAMES.index(name) for name in layers)
    out, stats = {}, {}
    x = net.preprocess(x)
    for name in LAYER_NAMES[: last + 1]:
        if name.startswith("conv"):
            x = getattr(net, name)(x)
            mean = jnp.mean(x, axis=(0, 1, 2))
            var = jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))
            stats[name] = (mean, var)
            x = (x - mean) * jax.lax.rsqrt(var + _BN_EPS)
        elif name.startswith("relu"):
            x = jax.nn.relu(x)
        else:
            x = avg_pool(x)
        if name in wanted:
            out[name] = x
    return {name: out[name] for name in layers}, stats


def fold_normalisation(net: StyleCNN, x: jax.Array) -> StyleCNN:
    """A plain :class:`StyleCNN` computing what :func:`normalised_features` computes on
    ``x``: each convolution's kernel and bias divided by the standard deviation of its
    output over ``x`` and the bias shifted by the mean (``net`` is left alone)."""
    _, stats = jax.jit(lambda x: normalised_features(net, x, (LAYER_NAMES[-1],)))(x)
    folded = nnx.clone(net)
    for name, (mean, var) in stats.items():
        conv = getattr(folded, name)
        inv = jax.lax.rsqrt(var + _BN_EPS)
        conv.kernel[...] = conv.kernel[...] * inv
        conv.bias[...] = (conv.bias[...] - mean) * inv
    return folded


class Trainee(nnx.Module):
    """style_cnn and its classifier head: batch-normalised features (see the module doc);
    per-channel mean and std of the style layers -> one dense layer -> logits."""

    def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
        self.features = StyleCNN(rngs=rngs)
        channels = layer_channels()
        dim = 2 * sum(channels[name] for name in DEFAULT_STYLE_LAYERS)
        self.head = Dense(dim, num_classes, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        stats = []
        features, _ = normalised_features(self.features, x, DEFAULT_STYLE_LAYERS)
        for f in features.values():
            mean = jnp.mean(f, axis=(1, 2))
            var = jnp.mean(jnp.square(f - mean[:, None, None]), axis=(1, 2))
            stats += [mean, jnp.sqrt(var + _STD_EPS)]
        return self.head(jnp.concatenate(stats, axis=-1))


def load_photos(recipe: Recipe) -> jax.Array:
    """(photos, S, S, 3): the recipe's photos, shorter side ``image_size``, centre square."""
    return jnp.stack([
        jnp.asarray(images.load_image(name, recipe.image_size, square=True)[0])
        for name in recipe.photos
    ])


def sample_batch(
    key: jax.Array, photos: jax.Array, recipe: Recipe, batch_size: int
) -> tuple[jax.Array, jax.Array]:
    """(crops (B, crop, crop, 3), labels (B,)): random regions, scales, positions, flips."""
    g, size = recipe.grid, recipe.image_size
    k_label, k_side, k_y, k_x, k_flip = jax.random.split(key, 5)
    labels = jax.random.randint(k_label, (batch_size,), 0, recipe.num_classes)
    photo, region = labels // g**2, labels % g**2
    log_side = jax.random.uniform(k_side, (batch_size,), minval=math.log(recipe.crop_min),
                                  maxval=math.log(recipe.crop_max))
    side = jnp.exp(log_side)
    cell = size / g
    centre_y = (region // g + jax.random.uniform(k_y, (batch_size,))) * cell
    centre_x = (region % g + jax.random.uniform(k_x, (batch_size,))) * cell
    top = jnp.clip(centre_y - side / 2, 0.0, size - side)
    left = jnp.clip(centre_x - side / 2, 0.0, size - side)
    scale = recipe.crop / side

    def crop(p, top, left, scale):
        return jax.image.scale_and_translate(
            photos[p], (recipe.crop, recipe.crop, 3), (0, 1), jnp.stack([scale, scale]),
            jnp.stack([-top * scale, -left * scale]), "linear", antialias=True,
        )

    x = jax.vmap(crop)(photo, top, left, scale)
    flip = jax.random.bernoulli(k_flip, 0.5, (batch_size,))
    x = jnp.where(flip[:, None, None, None], x[:, :, ::-1], x)
    return jnp.clip(x, 0.0, 1.0), labels


def train(
    recipe: Recipe = Recipe(),
    *,
    log: Callable[[str], None] | None = None,
    log_every: int = 100,
    eval_batches: int = 8,
) -> tuple[StyleCNN, float]:
    """Trains style_cnn by ``recipe``; returns it and its accuracy on ``eval_batches`` x
    128 fresh crops of the training photos (default recipe: 64 classes, chance 1.6%)."""
    photos = load_photos(recipe)
    model = Trainee(recipe.num_classes, rngs=nnx.Rngs(recipe.seed))
    graphdef, params = nnx.split(model)
    warmup = min(recipe.warmup_steps, recipe.steps // 2)
    schedule = optax.warmup_cosine_decay_schedule(
        0.0, recipe.learning_rate, warmup, max(recipe.steps, warmup + 1)
    )
    tx = optax.adamw(schedule, weight_decay=recipe.weight_decay)
    train_key, eval_key = jax.random.split(jax.random.key(recipe.seed))

    def loss_fn(params, x, y):
        logits = nnx.merge(graphdef, params)(x)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
        return loss, jnp.mean(jnp.argmax(logits, -1) == y)

    # One compiled step called from Python: XLA:CPU runs the same step inside a
    # fori_loop about ten times slower (measured: 1.7 s against 0.15 s per step).
    @jax.jit
    def step(params, opt_state, photos, i):
        x, y = sample_batch(jax.random.fold_in(train_key, i), photos, recipe,
                            recipe.batch_size)
        (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, x, y)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, acc

    opt_state = tx.init(params)
    started = time.perf_counter()
    sums = []
    for i in range(recipe.steps):
        params, opt_state, loss, acc = step(params, opt_state, photos, i)
        if log is None:
            continue
        sums.append((loss, acc))
        if ((i + 1) % log_every == 0 or i + 1 == recipe.steps):
            loss, acc = np.mean(np.asarray(sums), axis=0)
            sums = []
            log(f"step {i + 1}/{recipe.steps}: loss {loss:.3f}, batch accuracy {acc:.3f} "
                f"({time.perf_counter() - started:.0f} s)")

    @jax.jit
    def accuracy(params, photos, key):
        return loss_fn(params, *sample_batch(key, photos, recipe, 128))[1]

    eval_keys = jax.random.split(eval_key, eval_batches + 1)
    correct = np.mean([float(accuracy(params, photos, key)) for key in eval_keys[1:]])
    # In chunks of 64: each crop's photo is gathered whole first.
    chunks = jax.random.split(eval_keys[0], -(-recipe.fold_crops // 64))
    crops = jax.jit(lambda key, photos: sample_batch(key, photos, recipe, 64)[0])
    fold_x = jnp.concatenate([crops(key, photos) for key in chunks])[: recipe.fold_crops]
    return fold_normalisation(nnx.merge(graphdef, params).features, fold_x), float(correct)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m style.feature_training", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", required=True, help="the weights file to write (.npz)")
    parser.add_argument("--seed", type=int, default=Recipe.seed)
    parser.add_argument("--steps", type=int, default=Recipe.steps)
    args = parser.parse_args(argv)
    recipe = Recipe(seed=args.seed, steps=args.steps)
    model, accuracy = train(recipe, log=lambda line: print(line, flush=True))
    digest = pretrained.write_weights(args.out, model, recipe.as_dict(), accuracy)
    same = "the pinned file, bit for bit" if digest == pretrained.PINNED_SHA256 else (
        f"not the pinned {pretrained.PINNED_SHA256[:12]}")
    print(f"wrote {args.out}: sha256 {digest}, train-photo crop accuracy {accuracy:.3f} "
          f"({recipe.num_classes} classes): {same}")


if __name__ == "__main__":
    main()
