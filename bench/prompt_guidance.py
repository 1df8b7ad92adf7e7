"""Prompt accuracy of a text-to-image run against the classifier-free guidance scale, and a
grid of one row per prompt.

    python bench/prompt_guidance.py --workdir runs/digits_text

For each guidance scale (`--scales`), `--per_prompt` samples of every caption of both
phrasing splits (`data.captions`: the training phrasings and the held-out ones, whose
wording the model never saw), scored by the project's digit classifier as evaluate.py's
prompt accuracy is. Writes `--out`.json (every point), .md (the table) and .png (accuracy
against scale); `--grid` is one row per held-out prompt (one per digit) at `--grid_scale`.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from absl import flags

import scoregen
from data import captions
from training import cli, eval_hook, images

_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a text_diffusion run.")
_SCALES = flags.DEFINE_list("scales", ["0", "1", "2", "3", "5"], "Guidance scales.")
_PER_PROMPT = flags.DEFINE_integer("per_prompt", 10, "Samples of every caption.")
_SAMPLER = flags.DEFINE_string("sampler", "dpm_solver_pp", "Sampler.")
_STEPS = flags.DEFINE_integer("steps", 25, "Sampler steps.")
_OUT = flags.DEFINE_string("out", "bench/results/digits_text_guidance", "Output stem.")
_GRID = flags.DEFINE_string("grid", "docs/digits_text_prompts.png", "Grid PNG ('' for none).")
_GRID_SCALE = flags.DEFINE_float("grid_scale", 3.0, "Guidance scale of the grid.")
_GRID_COLUMNS = flags.DEFINE_integer("grid_columns", 10, "Samples per grid row.")
flags.mark_flags_as_required(["workdir"])


def _table(points: list[dict], header: str) -> str:
    lines = [header, "", "| guidance | held-out phrasings | training phrasings | seconds |",
             "|---|---|---|---|"]
    lines += [f"| {p['guidance_scale']:g} | {p['heldout']:.3f} | {p['train']:.3f} | "
              f"{p['seconds']:.0f} |" for p in points]
    return "\n".join(lines) + "\n"


def _plot(points: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [p["guidance_scale"] for p in points]
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for split, label in (("heldout", "held-out phrasings"), ("train", "training phrasings")):
        ax.plot(scales, [p[split] for p in points], marker="o", label=label)
    ax.set_xlabel("classifier-free guidance scale")
    ax.set_ylabel("prompt accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _grid(model: scoregen.Model, path: Path) -> None:
    """One row per digit: its first held-out phrasing, `--grid_columns` samples each."""
    prompts = tuple(captions.prompts_for(d, "heldout")[0] for d in range(captions.NUM_CLASSES))
    columns = _GRID_COLUMNS.value
    samples = model.sample(columns * len(prompts), prompts=prompts, sampler=_SAMPLER.value,
                           steps=_STEPS.value, guidance_scale=_GRID_SCALE.value)
    images.save_png(path, images.samples_picture(samples, len(prompts)))
    print(f"grid of {len(prompts)} prompts ({', '.join(prompts)}) -> {path}")


def main(argv: list[str]) -> None:
    del argv
    model = scoregen.load(_WORKDIR.value)
    points = []
    for scale in map(float, _SCALES.value):
        start = time.time()
        accuracy = eval_hook.prompt_accuracy(model.config, model.family, model.state,
                                             per_prompt=_PER_PROMPT.value,
                                             guidance_scale=scale, sampler=_SAMPLER.value,
                                             steps=_STEPS.value)
        points.append({"guidance_scale": scale, **accuracy,
                       "seconds": round(time.time() - start, 1)})
        print(json.dumps(points[-1]), flush=True)
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"workdir": _WORKDIR.value, "step": model.step, "sampler": _SAMPLER.value,
            "steps": _STEPS.value, "per_prompt": _PER_PROMPT.value,
            "prompts": {s: len(captions.bank(s)) for s in captions.SPLITS}}
    out.with_suffix(".json").write_text(json.dumps({**meta, "points": points}, indent=2))
    header = (f"Prompt accuracy of {_WORKDIR.value} (step {model.step}), {_SAMPLER.value} "
              f"{_STEPS.value} steps, {_PER_PROMPT.value} samples of each of "
              f"{meta['prompts']['heldout']} held-out and {meta['prompts']['train']} "
              "training captions; the project's digit classifier reads the digit.")
    out.with_suffix(".md").write_text(_table(points, header))
    _plot(points, out.with_suffix(".png"))
    if _GRID.value:
        _grid(model, Path(_GRID.value))
    print(_table(points, header))


if __name__ == "__main__":
    cli.run_on_workdir(main)
