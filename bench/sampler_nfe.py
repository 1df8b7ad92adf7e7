"""Image quality against cost for every sampler: FD (and precision/recall) of a trained model
at 5-1000 score evaluations, with wall seconds per 1,000 samples.

    python bench/sampler_nfe.py --config configs/digits_vp.py --workdir runs/digits_vp
    python bench/sampler_nfe.py --config configs/digits_ve.py --workdir runs/digits_ve \
        --samplers edm_heun,dpm_solver_pp --nfe 10,20

FD is evaluate.py's: the project's digits features, the train split as reference, chunks of
the test-split size (360), mean over chunks; the real test-vs-train floor is printed beside.
A sampler's step count is chosen so that its true nfe (as the sampler reports it, Tweedie
denoising included) is the largest not above each target; the table records the nfe it
actually used. The adaptive 'ode' sampler is swept over tolerances instead and placed at the
nfe it chose. Seconds exclude compilation (the sampler is compiled ahead of time).

Results go to --out (JSON, appended point by point so an interrupted run resumes where it
stopped), with a markdown table (.md) and a plot (.png) beside it. The JSON records the
feature network's sha256, and a run resumed with another network is refused: FDs of two
feature spaces do not go in one table. Each point's samples are kept (uint8 .npz in
--samples_dir, default WORKDIR/sampler_nfe_samples) so that they can be scored again
without sampling again. The plot draws both real floors (the stratified test split's and
the i.i.d. one, see evaluation/runner.py).
"""

import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench.sampler_variants import VARIANTS, finish_plot, steps_for_nfe, variant
from bench.sampler_variants import common_options as _common
from diffusion import sampling
from errors import UserError
from evaluation import protocol
from training import cli, images, inference

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a trained diffusion model.")
_SAMPLERS = flags.DEFINE_list("samplers", None, "Sampler names (default: every registered "
                              "sampler that serves the model's SDE).")
_NFE = flags.DEFINE_list("nfe", ["5", "10", "20", "35", "50", "100", "1000"],
                         "Target numbers of score evaluations.")
_TOLERANCES = flags.DEFINE_list("ode_tolerances", ["1e-1", "1e-2", "1e-3", "1e-4", "1e-5"],
                                "rtol = atol values of the adaptive 'ode' sampler.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 1000, "Samples per point.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 1000, "Samples per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every point).")
_REPORT_ONLY = flags.DEFINE_bool("report_only", False, "Only rewrite the table and plot of "
                                  "the points already in --out.")
_OUT = flags.DEFINE_string("out", None, "Results JSON (default WORKDIR/sampler_nfe.json).")
_SAMPLES_DIR = flags.DEFINE_string("samples_dir", None, "Where each point's samples are kept "
                                   "(default WORKDIR/sampler_nfe_samples).")
flags.mark_flags_as_required(["config", "workdir"])

def _serves(name: str, sde, common: dict) -> bool:
    sampler, options = variant(name)
    try:
        sampling.get_sampler(sampler, sde, (1, 1), steps=2, **common, **options)
    except ValueError:
        return False
    return True


def _points(sde, names: list[str], targets: list[int], tolerances: list[float],
            common: dict):
    """(entry, sampler, steps, options, label) for every point of the sweep."""
    for name in names:
        sampler, options = variant(name)
        if sampler == "ode":
            for tol in tolerances:
                yield name, sampler, None, {**options, "rtol": tol, "atol": tol}, f"tol={tol:g}"
            continue
        chosen = set()
        for target in targets:
            steps = steps_for_nfe(sampler, sde, target, common, options)
            if steps is not None and steps not in chosen:
                chosen.add(steps)
                yield name, sampler, steps, options, f"steps={steps}"


def _measure(family, state, evaluator, name, steps, options, num, batch, seed, keep: Path):
    sampler = sampling.get_sampler(name, family.sde, (batch, *family.data_shape), steps=steps,
                                   **_common(family.config), **options)

    def sample(params, key):
        x, nfe = sampler(key, family.score_fn(params))
        return family.to_unit_range(x), nfe

    params = family.sample_params(state)
    key = jax.random.PRNGKey(seed)
    compiled = jax.jit(sample).lower(params, key).compile()
    start, chunks, nfe = time.perf_counter(), [], 0
    for i in range(math.ceil(num / batch)):
        x, nfe = compiled(params, jax.random.fold_in(key, i))
        chunks.append(np.asarray(jax.device_get(x)))
    seconds = time.perf_counter() - start
    samples = np.concatenate(chunks)[:num]
    if not np.isfinite(samples).all():
        return {"nfe": int(nfe), "seconds_per_1000": seconds * 1000 / num, "fd": None}
    pixels = images.to_uint8(samples)
    keep.parent.mkdir(parents=True, exist_ok=True)
    np.savez(keep, images=pixels, sampler=np.str_(name), nfe=np.int64(nfe), seed=np.int64(seed))
    metrics = evaluator(pixels)
    return {"nfe": int(nfe), "seconds_per_1000": seconds * 1000 / num,
            **{k: metrics[k] for k in ("fd", "fd_std", "precision", "recall")}}


def write_table(results: dict, path: Path) -> str:
    floor, iid = results["floor"], results.get("floor_iid")
    lines = [f"Floor (real test vs train): FD {floor['fd']:.3f}, precision "
             f"{floor['precision']:.3f}, recall {floor['recall']:.3f}"
             + (f"; i.i.d. floor: FD {iid['fd']:.3f} ± {iid['fd_std']:.3f}" if iid else "")
             + f". Features: {results.get('feature_network', 'not recorded')}", "",
             "| sampler | setting | NFE | FD | precision | recall | s / 1000 samples |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in sorted(results["points"], key=lambda p: (p["sampler"], p["nfe"])):
        fd = "diverged" if p["fd"] is None else f"{p['fd']:.3f} ± {p['fd_std']:.3f}"
        pr = ("-", "-") if p["fd"] is None else (f"{p['precision']:.3f}", f"{p['recall']:.3f}")
        lines.append(f"| {p['sampler']} | {p['setting']} | {p['nfe']} | {fd} | {pr[0]} | "
                     f"{pr[1]} | {p['seconds_per_1000']:.1f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def matrix_table(results: dict, targets: list[int]) -> str:
    """FD per sampler (rows) and NFE budget (columns): each fixed-step point sits in the
    smallest budget at or above its nfe; adaptive 'ode' points are listed after."""
    rows: dict[str, dict[int, dict]] = {}
    adaptive = []
    for p in results["points"]:
        if p["setting"].startswith("tol="):
            adaptive.append(p)
            continue
        budget = min((t for t in targets if t >= p["nfe"]), default=None)
        if budget is not None:
            rows.setdefault(p["sampler"], {})[budget] = p
    lines = ["| sampler | " + " | ".join(f"{t} NFE" for t in targets) + " |",
             "|---|" + "---:|" * len(targets)]
    for name in sorted(rows):
        cells = []
        for t in targets:
            p = rows[name].get(t)
            cells.append("-" if p is None else "diverged" if p["fd"] is None
                         else f"{p['fd']:.3f}")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    if adaptive:
        text += "\nAdaptive probability-flow ODE (Tsit5, rtol = atol = tol): " + "; ".join(
            f"{p['setting']}: {p['nfe']} NFE, FD {p['fd']:.3f}"
            for p in sorted(adaptive, key=lambda p: p["nfe"])) + "\n"
    return text


def write_plot(results: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = sorted({p["sampler"] for p in results["points"]})
    colours = plt.cm.tab20(np.linspace(0, 1, max(len(names), 2)))
    for name, colour in zip(names, colours, strict=False):
        pts = sorted((p["nfe"], p["fd"]) for p in results["points"]
                     if p["sampler"] == name and p["fd"] is not None)
        if pts:
            ax.plot(*zip(*pts, strict=True), marker="o", label=name, color=colour)
    finish_plot(fig, ax, results, path, xlabel="score evaluations (NFE)", title=title)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    out = Path(_OUT.value or Path(_WORKDIR.value) / "sampler_nfe.json")
    family, state, step = inference.restore_latest(config, _WORKDIR.value)
    common = _common(config)
    names = _SAMPLERS.value or [n for n in dict.fromkeys([*sampling.SAMPLERS, *VARIANTS])
                                if _serves(n, family.sde, common)]
    evaluator = protocol.SampleEvaluator(config, ("fd", "pr"))
    features = f"{evaluator.extractor.name} {evaluator.extractor.checksum[:12]}"
    results = json.loads(out.read_text()) if out.exists() else {
        "workdir": _WORKDIR.value, "checkpoint_step": step, "num_samples": _NUM_SAMPLES.value,
        "seed": _SEED.value, "device": str(jax.devices()[0]), "feature_network": features,
        "floor": evaluator.floor(_NUM_SAMPLES.value),
        "floor_iid": evaluator.iid_floor(_NUM_SAMPLES.value), "points": []}
    if results.get("feature_network") != features and not _REPORT_ONLY.value:
        raise UserError(f"{out} was measured with feature network "
                        f"{results.get('feature_network', '(not recorded)')}, not {features}: "
                        "pass another --out")
    samples_dir = Path(_SAMPLES_DIR.value or Path(_WORKDIR.value) / "sampler_nfe_samples")
    out.parent.mkdir(parents=True, exist_ok=True)
    done = {(p["sampler"], p["setting"]) for p in results["points"]}
    targets = sorted(int(n) for n in _NFE.value)
    tolerances = [float(t) for t in _TOLERANCES.value]
    points = [] if _REPORT_ONLY.value else _points(family.sde, names, targets, tolerances,
                                                   common)
    for name, sampler, steps, options, setting in points:
        if (name, setting) in done:
            continue
        point = _measure(family, state, evaluator, sampler, steps, options, _NUM_SAMPLES.value,
                         min(_BATCH_SIZE.value, _NUM_SAMPLES.value), _SEED.value,
                         samples_dir / f"{name}_{setting.replace('=', '')}.npz")
        results["points"].append({"sampler": name, "setting": setting, **point})
        out.write_text(json.dumps(results, indent=1))
        print(f"{name:>18} {setting:>12} nfe {point['nfe']:>5}  FD {point['fd']}  "
              f"{point['seconds_per_1000']:.1f} s/1000", flush=True)
    print(write_table(results, out.with_suffix(".md")))
    print(matrix_table(results, targets))
    write_plot(results, out.with_suffix(".png"), f"{Path(_WORKDIR.value).name} "
               f"(step {results['checkpoint_step']}, {results['num_samples']} samples)")


if __name__ == "__main__":
    cli.run(main)
