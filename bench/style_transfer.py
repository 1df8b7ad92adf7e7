"""Style transfer's figures: 3 contents x 3 styles by optimisation (Gatys, the offline
style_cnn, ``stylize.py``'s defaults) and, given a trained ``configs/style_adain.py`` run,
by the feed-forward network; the time per image at 256 px; the Gram (style) and content
loss curves of the optimisation.

    python bench/style_transfer.py --workdir runs/style_adain
        # writes docs/style_gatys_grid.png, docs/style_adain_grid.png,
        # docs/style_loss_curves.png and bench/results/style_transfer.{md,json}

Contents are centre-cropped squares. Every Gatys image is one ``style_transfer`` call, as
``stylize.py`` makes it: its wall time includes compiling the optimisation for that
image's shape. Content is measured twice: the relative feature error at the content layer
(the loss the optimisation keeps low) and the SSIM of the output's luminance against the
content's (no network involved).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from style_features import ssim_luminance  # noqa: E402

from style import GatysOptions, feature_nets, load_image, style_transfer  # noqa: E402

CONTENTS = ("chelsea", "astronaut", "coffee")
STYLES = ("immunohistochemistry", "hubble_deep_field", "flower")
DOCS = ROOT / "docs"
RESULTS = ROOT / "bench" / "results" / "style_transfer"


def gatys_runs(size: int, steps: int, say) -> list[dict]:
    """One optimisation per (content, style): image, history, seconds, content kept."""
    entry, net = feature_nets.load(feature_nets.DEFAULT)
    options = GatysOptions(content_layers=entry.content_layers,
                           style_layers=entry.style_layers, style_weight=entry.style_weight,
                           steps=steps)
    runs = []
    for content_name in CONTENTS:
        content, _ = load_image(content_name, size, square=True)
        for style_name in STYLES:
            style, _ = load_image(style_name, size)
            start = time.perf_counter()
            result = style_transfer(content, style, lambda x: net(x, options.layers),
                                    entry.layer_names, options)
            seconds = time.perf_counter() - start
            first, last = result.history[0], result.history[-1]
            run = {"content": content_name, "style": style_name, "seconds": seconds,
                   "shape": list(result.image.shape), "style_loss": [first.style, last.style],
                   "content_loss": last.content, "ssim": ssim_luminance(result.image, content),
                   "history": [r._asdict() for r in result.history], "image": result.image}
            runs.append(run)
            say(f"| gatys | {content_name} | {style_name} | {seconds:.1f} | "
                f"{first.style / last.style:.0f}x | {last.content:.3f} | {run['ssim']:.3f} |")
    return runs


def adain_runs(workdir: str, size: int, repeats: int, say) -> tuple[list[dict], dict]:
    """One forward pass per (content, style), and the steady time per 256 px image."""
    from training.stylize import load

    stylizer = load(workdir)
    runs = []
    for content_name in CONTENTS:
        content, _ = load_image(content_name, size, square=True)
        for style_name in STYLES:
            style, _ = load_image(style_name, size)
            start = time.perf_counter()
            image = stylizer(content, style)
            seconds = time.perf_counter() - start  # the first of a shape compiles
            runs.append({"content": content_name, "style": style_name, "seconds": seconds,
                         "ssim": ssim_luminance(image, content), "image": image})
            say(f"| adain | {content_name} | {style_name} | {seconds:.2f} | | | "
                f"{runs[-1]['ssim']:.3f} |")
    content, _ = load_image(CONTENTS[0], size, square=True)
    style, _ = load_image(STYLES[0], size, square=True)
    stylizer(content, style)  # compile this shape
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        stylizer(content, style)
        best = min(best, time.perf_counter() - start)
    timing = {"size": size, "seconds_per_image": best, "images_per_second": 1.0 / best,
              "step": stylizer.step}
    return runs, timing


def grid(runs: list[dict], size: int, path: Path, title: str) -> None:
    """Styles across the top, contents down the left, each output in its cell."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(STYLES) + 1
    fig, axes = plt.subplots(len(CONTENTS) + 1, n, figsize=(2.2 * n, 2.2 * (len(CONTENTS) + 1)))
    for ax in axes.flat:
        ax.axis("off")
    for j, name in enumerate(STYLES, start=1):
        axes[0, j].imshow(load_image(name, size, square=True)[0])
        axes[0, j].set_title(name, fontsize=8)
    for i, name in enumerate(CONTENTS, start=1):
        axes[i, 0].imshow(load_image(name, size, square=True)[0])
        axes[i, 0].set_title(name, fontsize=8)
    for run in runs:
        i, j = CONTENTS.index(run["content"]) + 1, STYLES.index(run["style"]) + 1
        axes[i, j].imshow(np.clip(run["image"], 0, 1))
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def curves(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_s, ax_c) = plt.subplots(1, 2, figsize=(9, 3.4))
    for run in runs:
        steps = [r["step"] for r in run["history"]]
        label = f"{run['content']} x {run['style']}"
        ax_s.semilogy(steps, [r["style"] for r in run["history"]], label=label, lw=1)
        ax_c.plot(steps, [r["content"] for r in run["history"]], lw=1)
    ax_s.set(xlabel="L-BFGS step", ylabel="style (Gram) loss")
    ax_c.set(xlabel="L-BFGS step", ylabel="content loss (relative)")
    ax_s.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", help="a trained configs/style_adain.py run")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no_write", action="store_true", help="print only")
    args = parser.parse_args()
    lines: list[str] = []

    def say(line: str = "") -> None:
        print(line, flush=True)
        lines.append(line)

    say("# Style transfer: 3 contents x 3 styles")
    say()
    say(f"`python bench/style_transfer.py {' '.join(sys.argv[1:])}`: {os.cpu_count()} CPU "
        f"threads, {jax.device_count()} {jax.default_backend()} device(s), {args.size} px")
    say()
    say("| method | content | style | seconds | style loss down | content loss | ssim |")
    say("| --- | --- | --- | --- | --- | --- | --- |")
    gatys = gatys_runs(args.size, args.steps, say)
    adain, timing = adain_runs(args.workdir, args.size, args.repeats, say) if args.workdir \
        else ([], None)
    factors = [r["style_loss"][0] / r["style_loss"][1] for r in gatys]
    summary = {
        "gatys_seconds_per_image": float(np.mean([r["seconds"] for r in gatys])),
        "gatys_style_reduction_min": float(min(factors)),
        "gatys_content_loss_mean": float(np.mean([r["content_loss"] for r in gatys])),
        "gatys_ssim_mean": float(np.mean([r["ssim"] for r in gatys])),
        "adain": timing,
        "adain_ssim_mean": float(np.mean([r["ssim"] for r in adain])) if adain else None,
    }
    say()
    say(json.dumps(summary))
    if args.no_write:
        return
    grid(gatys, args.size, DOCS / "style_gatys_grid.png",
         f"Gatys, style_cnn, {args.steps} L-BFGS steps at {args.size} px")
    curves(gatys, DOCS / "style_loss_curves.png")
    if adain:
        grid(adain, args.size, DOCS / "style_adain_grid.png",
             f"feed-forward AdaIN ({args.workdir}, step {timing['step']}), one pass")
    RESULTS.with_suffix(".md").write_text("\n".join(lines) + "\n")
    drop = ("image",)
    RESULTS.with_suffix(".json").write_text(json.dumps(
        {"summary": summary, "runs": [{k: v for k, v in r.items() if k not in drop}
                                      for r in gatys + adain]}, indent=1))


if __name__ == "__main__":
    main()
