"""Does the trained style_cnn transfer style better than the same network with random
weights? Gatys (:mod:`style.gatys`) with each feature network on 3 content x 3 style
photos, every output scored by judges that neither run optimised:

* ``judge``: style_cnn trained by the same recipe with another seed (seed 1), cached in
  the scoregen cache folder (``style_cnn-judge-*.npz``; trained on first use, minutes).
  Its style score is the Gram (style) loss of the output against the style image,
  divided by the content image's own (< 1: the output moved towards the style); its
  content score the relative feature error at relu4_2 against the content image.
  It shares the trained network's objective and data, so it may favour it: hence
* hand-made statistics that no network learnt: ``colour``, the sliced Wasserstein
  distance between the pixels' RGB distributions (64 fixed directions), and ``filters``,
  the relative Gram distance of Gaussian-derivative filter responses (first and second
  derivatives at 3 scales, on Y, I and Q), both as ratios to the content image's own;
  and ``ssim``, the SSIM of the output's luminance against the content's.

Then one run at 256 px, 300 L-BFGS steps, with the trained network: its wall time
(compilation included, and the optimisation alone) and the style loss's reduction factor.

    python bench/style_features.py             # writes bench/results/style_features.md
                                               # and docs/style_features_vs_random.png
    python bench/style_features.py --vgg       # adds a random-weights VGG-19 column (slow)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from evaluation.digits_features import cache_dir
from networks import style_cnn, vgg
from style import (
    GatysOptions,
    color,
    feature_training,
    load_image,
    losses,
    pretrained,
    style_transfer,
)

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "style_features.md"
FIGURE = ROOT / "docs" / "style_features_vs_random.png"
# Content and style photos; all but astronaut and flower are held out of training
# (style.feature_training.HELD_OUT).
CONTENTS = ("chelsea", "coffee", "astronaut")
STYLES = ("immunohistochemistry", "hubble_deep_field", "flower")
TIMING_PAIR = ("chelsea", "immunohistochemistry")
JUDGE_RECIPE = feature_training.Recipe(seed=1)
# The comparison's own settings, fixed: VGG's block-4 content layer and GatysOptions'
# default weights (stylize.py's defaults for style_cnn keep more content: docs/style.md).
RUN_CONTENT_LAYERS = ("relu4_2",)
JUDGE_CONTENT_LAYERS = ("relu4_2",)


# ----------------------------------------------------------------------------------------
# The judges


def judge_network() -> style_cnn.StyleCNN:
    """style_cnn of :data:`JUDGE_RECIPE`, from the cache (trained and cached on first use)."""
    text = json.dumps(JUDGE_RECIPE.as_dict(), sort_keys=True)
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    path = cache_dir() / f"style_cnn-judge-{digest}.npz"
    if not path.is_file():
        print(f"training the judge (seed {JUDGE_RECIPE.seed}; once, cached at {path})")
        model, accuracy = feature_training.train(
            JUDGE_RECIPE, log=lambda line: print("  judge", line, flush=True)
        )
        pretrained.write_weights(path, model, JUDGE_RECIPE.as_dict(), accuracy)
    return pretrained.read_weights(path)[0]


class Judge:
    """Scores of an output against its content and style images (see the module doc)."""

    def __init__(self, net: style_cnn.StyleCNN):
        layers = style_cnn.DEFAULT_STYLE_LAYERS + JUDGE_CONTENT_LAYERS
        self.features = jax.jit(lambda x: net(x[None], layers))
        self.weights = {n: 1.0 / len(style_cnn.DEFAULT_STYLE_LAYERS)
                        for n in style_cnn.DEFAULT_STYLE_LAYERS}
        self.directions = np.random.default_rng(0).standard_normal((3, 64))
        self.directions /= np.linalg.norm(self.directions, axis=0)
        self.bank = _filter_bank()

    def net_style(self, x: np.ndarray, style: np.ndarray) -> float:
        fx, fs = self.features(jnp.asarray(x)), self.features(jnp.asarray(style))
        grams = {n: losses.gram(fs[n])[0] for n in self.weights}
        return float(losses.style_loss(fx, grams, self.weights))

    def net_content(self, x: np.ndarray, content: np.ndarray) -> float:
        (name,) = JUDGE_CONTENT_LAYERS
        fx, fc = self.features(jnp.asarray(x)), self.features(jnp.asarray(content))
        return float(losses.content_loss(fx[name], fc[name]))

    def colour(self, x: np.ndarray, style: np.ndarray) -> float:
        """Sliced Wasserstein-1 distance between the RGB distributions (pixels resampled
        to a common count by quantiles)."""
        px, ps = x.reshape(-1, 3) @ self.directions, style.reshape(-1, 3) @ self.directions
        q = np.linspace(0, 1, 4096)
        return float(np.mean(np.abs(np.quantile(px, q, axis=0) - np.quantile(ps, q, axis=0))))

    def filters(self, x: np.ndarray, style: np.ndarray) -> float:
        """Mean over scales of the relative Gram distance of filter responses."""
        total = 0.0
        for fx, fs in zip(self.bank(x), self.bank(style), strict=True):
            gx, gs = fx.T @ fx / len(fx), fs.T @ fs / len(fs)
            total += np.mean((gx - gs) ** 2) / np.mean(gs**2)
        return float(total / 3)

    def score(self, out: np.ndarray, content: np.ndarray, style: np.ndarray) -> dict:
        """Style ratios (output's distance to the style / the content's), content scores."""
        return {
            "judge_style": self.net_style(out, style) / self.net_style(content, style),
            "judge_content": self.net_content(out, content),
            "colour": self.colour(out, style) / self.colour(content, style),
            "filters": self.filters(out, style) / self.filters(content, style),
            "ssim": ssim_luminance(out, content),
        }


def _filter_bank():
    """image -> per scale (pixels, 15) responses: d/dx, d/dy, d2/dx2, d2/dy2, d2/dxdy of
    a Gaussian (sigma 1, 2, 4) on the Y, I and Q channels."""
    from scipy import ndimage

    orders = ((0, 1), (1, 0), (0, 2), (2, 0), (1, 1))

    def bank(image: np.ndarray) -> list[np.ndarray]:
        yiq = np.asarray(color.rgb_to_yiq(jnp.asarray(image)), np.float64)
        out = []
        for sigma in (1.0, 2.0, 4.0):
            responses = [ndimage.gaussian_filter(yiq[..., c], sigma, order=o, mode="reflect")
                         * sigma ** sum(o) for c in range(3) for o in orders]
            out.append(np.stack(responses, -1).reshape(-1, len(responses)))
        return out

    return bank


def ssim_luminance(x: np.ndarray, content: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    y = lambda im: np.asarray(color.luminance(jnp.asarray(im)), np.float64)
    return float(structural_similarity(y(x), y(content), data_range=1.0))


# ----------------------------------------------------------------------------------------
# The runs


def run(net, layer_names, content, style, options, log=None):
    """(image, history, wall seconds, optimisation seconds, optimisation CPU seconds):
    one Gatys run. CPU seconds (all threads) do not grow when other jobs share the cores."""
    marks = []

    def callback(step, parts):
        marks.append((time.perf_counter(), time.process_time()))
        if log is not None and (step % 100 == 0):
            log(f"    step {step}: style {parts['style']:.3g}, content {parts['content']:.3g}")

    started = time.perf_counter()
    result = style_transfer(content, style, lambda x: net(x, options.layers), layer_names,
                            options, callback=callback)
    wall = time.perf_counter() - started
    (wall_0, cpu_0), (wall_1, cpu_1) = marks[0], marks[-1]
    return result.image, result.history, wall, wall_1 - wall_0, cpu_1 - cpu_0


def _geomean(values) -> float:
    return float(math.exp(np.mean(np.log(np.asarray(values)))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=128, help="side of the comparison runs")
    parser.add_argument("--steps", type=int, default=300, help="L-BFGS steps of those runs")
    parser.add_argument("--timing_size", type=int, default=256)
    parser.add_argument("--timing_steps", type=int, default=300)
    parser.add_argument("--weights", help="a style_cnn weights file instead of the pinned one")
    parser.add_argument("--vgg", action="store_true", help="add random-weights VGG-19")
    parser.add_argument("--no_write", action="store_true", help="print only")
    args = parser.parse_args()

    trained = (pretrained.read_weights(args.weights)[0] if args.weights
               else pretrained.load_style_cnn())
    nets = {"trained": (trained, style_cnn.LAYER_NAMES),
            "random": (style_cnn.StyleCNN(rngs=nnx.Rngs(0)), style_cnn.LAYER_NAMES)}
    if args.vgg:
        nets["vgg19_random"] = (vgg.VGG19(rngs=nnx.Rngs(0)), vgg.LAYER_NAMES)
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    # The timed run first, in a process that has compiled nothing yet.
    options = GatysOptions(content_layers=RUN_CONTENT_LAYERS,
                           style_layers=style_cnn.DEFAULT_STYLE_LAYERS,
                           steps=args.timing_steps)
    c, s = (load_image(n, args.timing_size, square=True)[0] for n in TIMING_PAIR)
    print(f"timing: {TIMING_PAIR[0]} x {TIMING_PAIR[1]}, {args.timing_size} px, "
          f"{args.timing_steps} L-BFGS steps, trained style_cnn")
    _, history, wall, optimise, cpu = run(trained, style_cnn.LAYER_NAMES, c, s, options, print)
    reduction = history[0].style / history[-1].style
    timing = (f"{args.timing_size} px, {args.timing_steps} L-BFGS steps ({TIMING_PAIR[0]} x "
              f"{TIMING_PAIR[1]}, trained style_cnn, default GatysOptions weights): style loss "
              f"{history[0].style:.3g} -> {history[-1].style:.3g} (reduced "
              f"{reduction:.0f}x), content loss {history[-1].content:.3g}; wall time "
              f"{wall:.1f} s in all, {optimise:.1f} s of it optimising "
              f"({1000 * optimise / args.timing_steps:.0f} ms/step; {cpu:.1f} CPU seconds over "
              "all threads), the rest compiling")
    print(timing)

    # One persistent compilation cache for the comparison: every pair has the same shapes,
    # so each network's programs compile once.
    jax.config.update("jax_compilation_cache_dir", tempfile.mkdtemp(prefix="style-bench-"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    judge = Judge(judge_network())
    options = GatysOptions(content_layers=RUN_CONTENT_LAYERS,
                           style_layers=style_cnn.DEFAULT_STYLE_LAYERS, steps=args.steps)
    vgg_options = GatysOptions(content_layers=("relu4_2",), steps=args.steps,
                               style_layers=("relu1_1", "relu2_1", "relu3_1", "relu4_1",
                                             "relu5_1"))
    rows, figure_rows = [], []
    for content_name in CONTENTS:
        content = load_image(content_name, args.size, square=True)[0]
        for style_name in STYLES:
            style = load_image(style_name, args.size, square=True)[0]
            outputs = {}
            for key, (net, names) in nets.items():
                opts = vgg_options if key.startswith("vgg") else options
                image, history, wall, *_ = run(net, names, content, style, opts)
                outputs[key] = image
                scores = judge.score(image, content, style)
                scores["own_reduction"] = history[0].style / history[-1].style
                rows.append((content_name, style_name, key, scores))
                print(f"{content_name} x {style_name} [{key}] ({wall:.0f} s): "
                      + ", ".join(f"{k} {v:.3g}" for k, v in scores.items()), flush=True)
            figure_rows.append((content_name, style_name, content, style, outputs))

    columns = ("judge_style", "colour", "filters", "judge_content", "ssim", "own_reduction")
    say(f"# Trained style_cnn against random features ({args.size} px, {args.steps} L-BFGS "
        "steps)")
    say()
    say("Generated by `python bench/style_features.py`; see its docstring for the scores. "
        "Style columns (`judge_style`, `colour`, `filters`) are the output's distance to the "
        "style image over the content image's own: lower is more style. `judge_content` "
        "(relative relu4_2 error against the content image; lower keeps more content) and "
        "`ssim` (luminance SSIM against the content; higher keeps more) measure content. "
        "`own_reduction`: the optimised network's own style loss, initial / final. The "
        "judge is style_cnn trained with seed 1; the runs use seed 0's pinned weights "
        "(trained) or a seed-0 initialisation (random).")
    say()
    say("| content | style | features | " + " | ".join(columns) + " |")
    say("|" + " --- |" * (3 + len(columns)))
    for content_name, style_name, key, scores in rows:
        say(f"| {content_name} | {style_name} | {key} | "
            + " | ".join(f"{scores[c]:.3g}" for c in columns) + " |")
    say()
    say("Geometric means over the 9 pairs, and the pairs where the trained features beat "
        "the random ones:")
    say()
    say("| features | " + " | ".join(columns) + " |")
    say("|" + " --- |" * (1 + len(columns)))
    means = {}
    for key in nets:
        mine = [r[3] for r in rows if r[2] == key]
        means[key] = {c: _geomean([m[c] for m in mine]) for c in columns}
        say(f"| {key} | " + " | ".join(f"{means[key][c]:.3g}" for c in columns) + " |")
    trained_rows = [r[3] for r in rows if r[2] == "trained"]
    random_rows = [r[3] for r in rows if r[2] == "random"]
    better = {c: sum((t[c] > r[c]) if c in ("ssim", "own_reduction") else (t[c] < r[c])
                     for t, r in zip(trained_rows, random_rows, strict=True)) for c in columns}
    say("| trained better | " + " | ".join(f"{better[c]}/9" for c in columns) + " |")
    say()
    say(f"Timing: {timing}.")
    say()
    say("Machine: 2 CPU cores shared with other jobs, this run under `nice -n 19`: the "
        "times are upper bounds.")
    if not args.no_write:
        RESULTS.parent.mkdir(parents=True, exist_ok=True)
        RESULTS.write_text("\n".join(lines) + "\n")
        _figure(figure_rows, FIGURE)
        print(f"wrote {RESULTS.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)}")


def _figure(figure_rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    titles = ("content", "style", "trained style_cnn", "random style_cnn")
    n = len(figure_rows)
    fig, axes = plt.subplots(n, 4, figsize=(4 * 1.6, n * 1.6), squeeze=False)
    for i, (content_name, style_name, content, style, outputs) in enumerate(figure_rows):
        panels = (content, style, outputs["trained"], outputs["random"])
        for j, panel in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(np.clip(panel, 0, 1))
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(titles[j], fontsize=8)
        axes[i, 0].set_ylabel(content_name, fontsize=7)
        axes[i, 1].set_ylabel(style_name.replace("_", " ")[:14], fontsize=7)
    fig.tight_layout(pad=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    main()
