"""Where the VE probability-flow gap comes from: the samplers, or the trained model?

On digits_ve every deterministic sampler plateaus near FD 1.0 while the reverse-SDE samplers
reach 0.10-0.15 (bench/results/digits_ve_nfe.md). Three experiments isolate the cause:

1. `closed_form`: the registered samplers at about 35 score evaluations on the exact score of
   the digits' training split (the empirical distribution; at noise level sigma a mixture of
   N(x_i, sigma^2) over the 1,437 images, whose score is a softmax-weighted pull towards them)
   with the VE SDE of the config (sigma 0.01 to 10, data in [0, 1]). Same grids, same final
   denoising, same prior: if the ODE samplers match the SDE samplers here, nothing in the
   samplers explains the gap.
2. `midpoint` (needs --workdir, a trained VE run): reverse diffusion (the SDE, 200 steps,
   geometric in sigma) from sigma_max down to sigma_mid, then Heun on the probability flow
   (25 steps, EDM's rho = 7 grid) from sigma_mid to sigma_min, and Tweedie denoising.
   sigma_mid = sigma_max is the pure ODE, sigma_mid = sigma_min the pure SDE: the curve says
   below which noise level the trained score is accurate enough for the ODE.
3. `grids` (needs --workdir): the deterministic samplers at 35 evaluations on other grids
   (EDM's rho 1, 3, 7, 15; uniform in t against EDM for Heun; DPM-Solver++'s log-SNR grid).

    python bench/ve_gap.py --config configs/digits_ve.py --workdir runs/digits_ve

FD is evaluate.py's (the project's digits features, the train split as reference, chunks of
360): --num_samples per point (default 720, two chunks) at seed 0. Writes
bench/results/ve_gap.{json,md}, point by point.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from ml_collections import config_flags

from bench.sampler_variants import common_options, steps_for_nfe, variant
from data import pipeline
from diffusion import edm, sampling
from diffusion.sde_lib import VESDE, get_sde
from evaluation import protocol
from training import cli, images, inference

_CONFIG = config_flags.DEFINE_config_file("config", None, "A VE experiment config.")
_WORKDIR = flags.DEFINE_string("workdir", None, "A trained VE run (midpoint and grids).")
_EXPERIMENTS = flags.DEFINE_list("experiments", ["closed_form", "midpoint", "grids"],
                                 "Which experiments to run.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 720, "Samples per point.")
_NFE = flags.DEFINE_integer("nfe", 35, "Score evaluations per sample (closed_form, grids).")
_OUT = flags.DEFINE_string("out", "bench/results/ve_gap.json", "Results JSON (.md beside).")
flags.mark_flags_as_required(["config"])

CLOSED_FORM_SAMPLERS = ("reverse_diffusion", "pc", "ancestral", "dpm_solver_pp_sde", "ode",
                        "heun", "edm_heun", "dpm_solver_pp")
SIGMA_MIDS = (10.0, 3.0, 1.0, 0.3, 0.1, 0.03, 0.01)
SDE_STEPS, ODE_STEPS = 200, 25
GRIDS = (("edm_heun", {"rho": 1.0}), ("edm_heun", {"rho": 3.0}), ("edm_heun", {"rho": 7.0}),
         ("edm_heun", {"rho": 15.0}), ("heun", {"time_grid": "uniform"}),
         ("heun", {"time_grid": "edm"}), ("dpm_solver_pp", {"time_grid": "logsnr"}))


def empirical_score_fn(data: np.ndarray, sde: VESDE):
    """The exact score of the training images blurred by N(0, sigma(t)^2): for x at t,
    (sum_i w_i x_i - x) / sigma^2 with w = softmax(-|x - x_i|^2 / (2 sigma^2))."""
    points = jnp.asarray(data.reshape(len(data), -1), jnp.float32)
    sq_points = jnp.sum(points**2, axis=1)

    def score_fn(x, t):
        flat = x.reshape(x.shape[0], -1)
        sigma = sde.marginal_std(t)[:, None]
        sq_dist = jnp.sum(flat**2, 1, keepdims=True) - 2 * flat @ points.T + sq_points
        weights = jax.nn.softmax(-sq_dist / (2 * sigma**2), axis=1)
        return ((weights @ points - flat) / sigma**2).reshape(x.shape)

    return score_fn


def _draw(sampler, score_fn, to_unit, num: int):
    def run(key):
        x, nfe = sampler(key, score_fn)
        return to_unit(x), nfe

    start = time.perf_counter()
    x, nfe = jax.jit(run)(jax.random.PRNGKey(0))
    pixels = images.to_uint8(np.asarray(jax.device_get(x))[:num])
    return pixels, int(nfe), time.perf_counter() - start


def _score(evaluator, pixels) -> dict:
    if pixels is None:
        return {"fd": None}
    metrics = evaluator(pixels)
    return {k: float(metrics[k]) for k in ("fd", "fd_std", "precision", "recall")}


def closed_form(config, evaluator, num: int, nfe: int):
    sde = get_sde(config)
    train = pipeline.read_split(config.data, "train")["image"].astype(np.float32) / 255.0
    score_fn = empirical_score_fn(train, sde)
    common = common_options(config)
    for name in CLOSED_FORM_SAMPLERS:
        sampler_name, options = variant(name)
        steps = None if sampler_name == "ode" else steps_for_nfe(sampler_name, sde, nfe,
                                                                  common, options)
        sampler = sampling.get_sampler(sampler_name, sde, (num, *train.shape[1:]),
                                       steps=steps, **common, **options)
        pixels, used, seconds = _draw(sampler, score_fn, lambda x: x, num)
        yield {"experiment": "closed_form", "sampler": name, "nfe": used,
               "seconds": seconds, **_score(evaluator, pixels)}


def _rho_grid(hi: float, lo: float, steps: int, rho: float = 7.0):
    """EDM's noise levels from hi to lo: evenly spaced in sigma^(1/rho)."""
    ramp = jnp.linspace(0.0, 1.0, steps + 1)
    return (hi ** (1 / rho) + ramp * (lo ** (1 / rho) - hi ** (1 / rho))) ** rho


def _sde_then_ode(sde: VESDE, score_fn, shape, sigma_mid: float):
    """Reverse diffusion from sigma_max to sigma_mid, Heun on the flow to sigma_min, Tweedie."""
    lo, hi = float(sde.sigma_min), float(sde.sigma_max)
    sde_sigmas = jnp.geomspace(hi, sigma_mid, SDE_STEPS + 1) if sigma_mid < hi else None
    ode_sigmas = _rho_grid(sigma_mid, lo, ODE_STEPS) if sigma_mid > lo else None

    def score_at(x, sigma):
        t = edm.sigma_to_t(sde, jnp.full(x.shape[:1], sigma))
        return score_fn(x, t)

    def sample(key):
        key, prior = jax.random.split(key)
        x = jax.random.normal(prior, shape) * hi
        if sde_sigmas is not None:
            def sde_step(i, carry):
                x, key = carry
                key, noise = jax.random.split(key)
                var = sde_sigmas[i] ** 2 - sde_sigmas[i + 1] ** 2
                x = x + var * score_at(x, sde_sigmas[i])
                return x + jnp.sqrt(var) * jax.random.normal(noise, shape), key

            x, key = jax.lax.fori_loop(0, SDE_STEPS, sde_step, (x, key))
        if ode_sigmas is not None:
            def slope(x, sigma):  # dx/dsigma = -sigma * score
                return -sigma * score_at(x, sigma)

            def heun(i, x):
                s0, s1 = ode_sigmas[i], ode_sigmas[i + 1]
                d0 = slope(x, s0)
                guess = x + (s1 - s0) * d0
                return x + (s1 - s0) * 0.5 * (d0 + slope(guess, s1))

            x = jax.lax.fori_loop(0, ODE_STEPS, heun, x)
        return x + lo**2 * score_at(x, lo)

    return sample


def midpoint(config, family, params, evaluator, num: int):
    sde, score_fn = family.sde, family.score_fn(params)
    shape = (num, *family.data_shape)
    for sigma_mid in SIGMA_MIDS:
        sample = _sde_then_ode(sde, score_fn, shape, sigma_mid)
        start = time.perf_counter()
        x = jax.jit(lambda key, draw=sample: family.to_unit_range(draw(key)))(
            jax.random.PRNGKey(0))
        pixels = images.to_uint8(np.asarray(jax.device_get(x)))
        yield {"experiment": "midpoint", "sigma_mid": sigma_mid,
               "seconds": time.perf_counter() - start, **_score(evaluator, pixels)}


def grids(config, family, params, evaluator, num: int, nfe: int):
    sde, score_fn = family.sde, family.score_fn(params)
    common = common_options(config)
    for name, options in GRIDS:
        steps = steps_for_nfe(name, sde, nfe, common, options)
        sampler = sampling.get_sampler(name, sde, (num, *family.data_shape), steps=steps,
                                       **common, **options)
        pixels, used, seconds = _draw(sampler, score_fn, family.to_unit_range, num)
        yield {"experiment": "grids", "sampler": name, "options": options, "nfe": used,
               "seconds": seconds, **_score(evaluator, pixels)}


def _fd(point: dict) -> str:
    return "diverged" if point["fd"] is None else f"{point['fd']:.3f} ± {point['fd_std']:.3f}"


def write_markdown(results: dict, path: Path) -> None:
    floor = results["floor"]
    lines = [f"Real floor (test vs train): FD {floor['fd']:.3f}. {results['num_samples']:,} "
             "samples per point, seed 0; FD on the pinned digits features.", ""]
    sections = {"closed_form": "Exact score of the training digits (no network)",
                "midpoint": "Trained digits_ve: reverse SDE down to sigma_mid, then the "
                            f"probability-flow ODE (Heun, {ODE_STEPS} steps)",
                "grids": "Trained digits_ve: deterministic samplers on other grids"}
    for experiment, title in sections.items():
        points = [p for p in results["points"] if p["experiment"] == experiment]
        if not points:
            continue
        lines += [f"### {title}", ""]
        if experiment == "midpoint":
            lines += ["| sigma_mid | FD | precision | recall |", "|---:|---:|---:|---:|"]
            lines += [f"| {p['sigma_mid']:g} | {_fd(p)} | {p.get('precision', 0):.3f} | "
                      f"{p.get('recall', 0):.3f} |" for p in points]
        else:
            lines += ["| sampler | options | NFE | FD | precision | recall |",
                      "|---|---|---:|---:|---:|---:|"]
            lines += [f"| {p['sampler']} | {p.get('options', '')} | {p['nfe']} | {_fd(p)} | "
                      f"{p.get('precision', 0):.3f} | {p.get('recall', 0):.3f} |"
                      for p in points]
        lines.append("")
    path.write_text("\n".join(lines))


def main(argv: list[str]) -> None:
    del argv
    config = _CONFIG.value
    if config.training.sde != "vesde":
        raise ValueError(f"a VE config is needed, got training.sde={config.training.sde!r}")
    out = Path(_OUT.value)
    out.parent.mkdir(parents=True, exist_ok=True)
    evaluator = protocol.SampleEvaluator(config, ("fd", "pr"))
    test = pipeline.read_split(config.data, "test")["image"]
    results = {"floor": {"fd": float(evaluator(test)["fd"])}, "points": [],
               "num_samples": _NUM_SAMPLES.value}
    runs = []
    if "closed_form" in _EXPERIMENTS.value:
        runs.append(closed_form(config, evaluator, _NUM_SAMPLES.value, _NFE.value))
    if {"midpoint", "grids"} & set(_EXPERIMENTS.value):
        if not _WORKDIR.value:
            raise ValueError("--workdir (a trained VE run) is needed for midpoint and grids")
        family, state, _ = inference.restore_latest(config, _WORKDIR.value)
        params = family.sample_params(state)
        if "midpoint" in _EXPERIMENTS.value:
            runs.append(midpoint(config, family, params, evaluator, _NUM_SAMPLES.value))
        if "grids" in _EXPERIMENTS.value:
            runs.append(grids(config, family, params, evaluator, _NUM_SAMPLES.value,
                              _NFE.value))
    for run in runs:
        for point in run:
            print(json.dumps(point), flush=True)
            results["points"].append(point)
            out.write_text(json.dumps(results, indent=1))
            write_markdown(results, out.with_suffix(".md"))
    print(out.with_suffix(".md").read_text())


if __name__ == "__main__":
    cli.quiet_library_logs()
    app.run(main)
