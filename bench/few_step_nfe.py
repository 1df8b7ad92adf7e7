"""Image quality against cost across models: FD of several trained runs (rectified flow,
reflow, distilled students, ...) at the step counts each supports, drawn as sample.py draws
them, on one plot with a reference curve of bench/sampler_nfe.py's.

    python bench/few_step_nfe.py \
        --run "digits_rf (flow_euler):runs/digits_rf:flow_euler:1,2,4,9,19" \
        --run "digits_reflow (flow_euler):runs/digits_reflow:flow_euler:1,2,4,9,19" \
        --run "digits_pd (DDIM):runs/digits_pd:ddim:4,8,16,32" \
        --reference "digits_vp (dpm_solver_pp):bench/results/digits_vp_nfe.json:dpm_solver_pp" \
        --out bench/results/few_step_nfe.json

A --run is NAME:WORKDIR:SAMPLER:STEPS (SAMPLER '-' for the run's own; each step count is
sample.py's --steps, so NFE is what the sampler reports, its final denoising step
included). FD is evaluate.py's on --num_samples i.i.d. samples (default 720, two chunks
of the test-split size, as bench/sampler_nfe.py), seed 0, EMA weights. Results go to --out
(JSON, appended point by point; a point already there is not drawn again), with a table
(.md) and the plot (.png) beside it. A reference of another feature network is refused.
"""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
from absl import app, flags

from bench.sampler_variants import finish_plot
from errors import UserError
from evaluation import protocol
from training import cli, run_config
from training.families.request import SampleRequest
from training.sample_run import Sources, draw

_RUNS = flags.DEFINE_multi_string("run", [], "NAME:WORKDIR:SAMPLER:STEPS,STEPS,...")
_REFERENCES = flags.DEFINE_multi_string("reference", [], "NAME:SAMPLER_NFE_JSON:SAMPLER, a "
                                        "curve of bench/sampler_nfe.py's results.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 720, "Samples per point.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 720, "Samples per sampler call.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed (the same for every point).")
_OUT = flags.DEFINE_string("out", "bench/results/few_step_nfe.json", "Results JSON.")


def _parse_run(text: str) -> tuple[str, str, str | None, list[int]]:
    parts = text.rsplit(":", 3)
    if len(parts) != 4:
        raise UserError(f"--run {text!r} is not NAME:WORKDIR:SAMPLER:STEPS")
    name, workdir, sampler, steps = parts
    try:
        counts = [int(s) for s in steps.split(",")]
    except ValueError as err:
        raise UserError(f"--run {text!r}: STEPS must be integers, got {steps!r}") from err
    return name, workdir, None if sampler == "-" else sampler, counts


def _reference_curve(text: str, features: str) -> dict:
    parts = text.rsplit(":", 2)
    if len(parts) != 3:
        raise UserError(f"--reference {text!r} is not NAME:SAMPLER_NFE_JSON:SAMPLER")
    name, path, sampler = parts
    results = json.loads(Path(path).read_text())
    if results.get("feature_network") != features:
        raise UserError(f"{path} was measured with feature network "
                        f"{results.get('feature_network')}, not {features}")
    points = sorted((p["nfe"], p["fd"]) for p in results["points"]
                    if p["sampler"] == sampler and p["fd"] is not None)
    return {"name": name, "points": [list(p) for p in points]}


def write_table(results: dict, path: Path) -> str:
    floor, iid = results["floor"], results["floor_iid"]
    lines = [f"Floor (real test vs train): FD {floor['fd']:.3f}; i.i.d. floor: FD "
             f"{iid['fd']:.3f} ± {iid['fd_std']:.3f}. {results['num_samples']} samples a "
             f"point, seed {results['seed']}, EMA weights. Features: "
             f"{results['feature_network']}", "",
             "| model | sampler | steps | NFE | FD | precision | recall |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for p in results["points"]:
        lines.append(f"| {p['model']} | {p['sampler']} | {p['steps']} | {p['nfe']} | "
                     f"{p['fd']:.3f} ± {p['fd_std']:.3f} | {p['precision']:.3f} | "
                     f"{p['recall']:.3f} |")
    text = "\n".join(lines) + "\n"
    path.write_text(text)
    return text


def write_plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for ref in results["references"]:
        ax.plot(*zip(*ref["points"], strict=True), ls="--", marker=".", color="grey",
                label=ref["name"])
    for model in dict.fromkeys(p["model"] for p in results["points"]):
        pts = sorted((p["nfe"], p["fd"]) for p in results["points"] if p["model"] == model)
        ax.plot(*zip(*pts, strict=True), marker="o", label=model)
    finish_plot(fig, ax, results, path, xlabel="network evaluations (NFE)",
                title=f"FD against NFE ({results['num_samples']} samples a point)")


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    runs = [_parse_run(text) for text in _RUNS.value]
    if not runs:
        raise UserError("give at least one --run NAME:WORKDIR:SAMPLER:STEPS")
    out = Path(_OUT.value)
    evaluator = protocol.SampleEvaluator(run_config.load_run_config(runs[0][1], None),
                                         ("fd", "pr"))
    features = f"{evaluator.extractor.name} {evaluator.extractor.checksum[:12]}"
    results = json.loads(out.read_text()) if out.exists() else {
        "num_samples": _NUM_SAMPLES.value, "seed": _SEED.value,
        "device": str(jax.devices()[0]), "feature_network": features,
        "floor": evaluator.floor(_NUM_SAMPLES.value),
        "floor_iid": evaluator.iid_floor(_NUM_SAMPLES.value), "points": []}
    if results["feature_network"] != features:
        raise UserError(f"{out} was measured with feature network "
                        f"{results['feature_network']}, not {features}: pass another --out")
    results["references"] = [_reference_curve(text, features) for text in _REFERENCES.value]
    done = {(p["model"], p["steps"]) for p in results["points"]}
    out.parent.mkdir(parents=True, exist_ok=True)
    for name, workdir, sampler, counts in runs:
        todo = [steps for steps in counts if (name, steps) not in done]
        if not todo:  # a run whose points are all in --out need not be on disk any more
            continue
        config = run_config.load_run_config(workdir, None)
        for steps in todo:
            request = SampleRequest(_NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value,
                                    sampler=sampler, steps=steps, seed=_SEED.value)
            samples, record = draw(config, Sources(workdir), request)
            metrics = evaluator(samples)
            results["points"].append({
                "model": name, "workdir": workdir, "checkpoint_step": int(record["step"]),
                "sampler": str(record["sampler"]), "steps": steps, "nfe": int(record["nfe"]),
                **{k: float(metrics[k]) for k in ("fd", "fd_std", "precision", "recall")}})
            out.write_text(json.dumps(results, indent=1))
            print(f"{name:>28} steps {steps:>4} nfe {int(record['nfe']):>4}  FD "
                  f"{metrics['fd']:.3f}", flush=True)
    out.write_text(json.dumps(results, indent=1))
    print(write_table(results, out.with_suffix(".md")))
    write_plot(results, out.with_suffix(".png"))


if __name__ == "__main__":
    cli.run(main)

