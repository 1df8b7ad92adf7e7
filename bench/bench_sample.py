"""Sampling throughput: compile seconds and samples/s at a number of score evaluations.

    python bench/bench_sample.py                                   # digits, 20 and 1000 NFE
    python bench/bench_sample.py --nfe 20 --batch 512
    python bench/bench_sample.py --config configs/cifar10_ddpmpp_vp.py \
        --override data.dataset=synthetic --batch 256

The parameters are freshly initialised (no checkpoint is read): throughput depends on the
network's shapes and the step count, not on the weights, so the figures are those of a
trained model of the config. Sampling runs as sample.py runs it (training.inference): the
state on the mesh of `config.sharding.mesh` with the training shardings, each batch split
over the devices (padded to a multiple of them).

For each target NFE (true score evaluations, Tweedie denoising included) the sampler's step
count is the largest whose NFE does not exceed it; the table records the NFE it used. Compile
seconds is the ahead-of-time compile of one batch's program; samples/s is measured after one
warm-up call, over --repeats calls (default: enough for about --seconds of sampling), the
samples left on the devices. A config whose dataset is not prepared still runs (only its
shapes are needed); a dataset the config names that cannot be read otherwise is an error.
"""

import argparse
import ast
import math
import sys
import time
import types
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax
import ml_collections
import numpy as np

import configs
from data.errors import DatasetNotPreparedError
from diffusion import sampling
from errors import UserError
from training import inference, loop
from training.families import get_family
from training.families.base import SAMPLERS
from training.families.diffusion import DiffusionFamily
from training.families.request import SampleRequest

COLUMNS = ("config", "sampler", "NFE", "batch", "compile s", "samples/s")


class _ShapeOnlyDiffusion(DiffusionFamily):
    """The diffusion family without a dataset: its data info comes from the config, so a
    config whose dataset is not prepared still builds (throughput needs only shapes)."""

    def _data_info(self, config: ml_collections.ConfigDict) -> Any:
        size, chans = config.data.image_size, config.data.num_channels
        return types.SimpleNamespace(shape=(size, size, chans),
                                     num_classes=int(config.model.num_classes))


def _parse_value(text: str, old: Any) -> Any:
    """A command-line value in the type of the config entry it replaces."""
    if isinstance(old, str):
        return text
    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text
    return float(value) if isinstance(old, float) and isinstance(value, int) else value


def load_config(spec: str, overrides: list[str]) -> ml_collections.ConfigDict:
    """The config file `spec` with `key.path=value` overrides (keys of configs/default.py)."""
    config = configs.load(spec)
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep:
            raise UserError(f"--override {override!r} is not KEY=VALUE")
        *parents, leaf = key.split(".")
        node = config
        try:
            for part in parents:
                node = node[part]
            node[leaf] = _parse_value(text, node[leaf])
        except (KeyError, AttributeError) as err:
            raise UserError(f"--override {override!r}: unknown config key {key!r}") from err
        except TypeError as err:
            raise UserError(f"--override {override!r}: {err}") from err
    return config


def make_family(config: ml_collections.ConfigDict):
    """The config's family; a diffusion model whose dataset is not prepared gets its
    shapes from the config."""
    try:
        return get_family(config)
    except DatasetNotPreparedError:
        if config.model.family != "diffusion":
            raise
        print(f"# {config.data.dataset} is not prepared: shapes from the config")
        return _ShapeOnlyDiffusion(config)


def _nfe_of(name: str, sde, steps: int, common: dict, options: dict) -> int:
    """The NFE a fixed-step sampler reports for `steps`, from a one-example run of a
    closed-form score (cheap and exact: the count does not depend on the score)."""
    draw = sampling.get_sampler(name, sde, (1, 1), steps=steps, **common, **options)
    return int(draw(jax.random.PRNGKey(0), lambda x, t: -x)[1])


def steps_for_nfe(config: ml_collections.ConfigDict, family, name: str, target: int
                  ) -> int | None:
    """The most steps of sampler `name` (the config's options) whose NFE is at most
    `target`; None if even one step needs more, or for a family without steps."""
    if SAMPLERS not in family.capabilities:
        return None
    sde = family.sde
    cfg = config.sampling
    common = {"eps": float(cfg.eps), "denoise": bool(cfg.noise_removal)}
    options = sampling.options_from_config(cfg, name)
    one, two = (_nfe_of(name, sde, s, common, options) for s in (1, 2))
    if one > target:
        return None
    per_step, fixed = two - one, 2 * one - two
    steps = max(1, (target - fixed) // max(per_step, 1))
    while steps > 1 and _nfe_of(name, sde, steps, common, options) > target:
        steps -= 1
    return steps


def bench(config: ml_collections.ConfigDict, family, state, mesh, name: str, target: int,
          batch: int, seconds: float, repeats: int | None) -> dict:
    """One row of the table: `batch` samples at about `target` NFE."""
    steps = steps_for_nfe(config, family, name, target)
    sampler_name = name if SAMPLERS in family.capabilities else None
    request = SampleRequest(batch, batch_size=batch, sampler=sampler_name, steps=steps)
    draw = inference.BatchSampler(family, batch, mesh, request)
    params = family.sample_params(state)
    key = np.asarray(jax.random.PRNGKey(0))
    start = time.perf_counter()
    compiled = draw.compile(params, key)
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    x, nfe = compiled(params, key)  # warm-up; also how long a call takes
    jax.block_until_ready(x)
    one_call = time.perf_counter() - start
    calls = repeats or max(1, min(100, math.ceil(seconds / max(one_call, 1e-6))))
    start = time.perf_counter()
    for i in range(calls):
        x, _ = compiled(params, np.asarray(jax.random.PRNGKey(i + 1)))
    jax.block_until_ready(x)
    elapsed = time.perf_counter() - start
    return {"sampler": name, "NFE": int(nfe), "batch": batch, "compile s": compile_s,
            "samples/s": batch * calls / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits_vp.py", help="Config file.")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="Config override, e.g. data.dataset=synthetic (repeatable).")
    parser.add_argument("--batch", type=int, default=None,
                        help="Samples per sampler call (default config.eval.batch_size).")
    parser.add_argument("--nfe", default="20,1000",
                        help="Comma-separated target numbers of score evaluations.")
    parser.add_argument("--sampler", default=None,
                        help="Sampler name (default: the config's sampling.method).")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="About how long to time each row, after the warm-up call.")
    parser.add_argument("--repeats", type=int, default=None,
                        help="Timed calls per row (overrides --seconds).")
    args = parser.parse_args()
    try:
        config = load_config(args.config, args.override)
        targets = [int(n) for n in args.nfe.split(",") if n.strip()]
        if not targets or min(targets) <= 0:
            raise UserError(f"--nfe must list positive integers, got {args.nfe!r}")
        batch = int(args.batch or config.eval.batch_size)
        if batch <= 0:
            raise UserError(f"--batch must be positive, got {batch}")
        family = make_family(config)
        mesh = inference.make_mesh(config)
        key = jax.random.PRNGKey(config.seed)
        abstract = jax.eval_shape(family.init_state, key)
        placed = loop.state_shardings(abstract, mesh, config.sharding.rules)
        state = jax.jit(family.init_state, out_shardings=placed)(key)
        name = args.sampler or str(config.sampling.method)
        print(f"# {jax.device_count()} {jax.devices()[0].platform} device(s), mesh "
              f"{dict(mesh.shape)}, {jax.process_count()} process(es); fresh parameters")
        print(" | ".join(COLUMNS))
        for target in targets:
            if SAMPLERS in family.capabilities and \
                    steps_for_nfe(config, family, name, target) is None:
                print(f"# {name}: one step needs more than {target} NFE; skipped")
                continue
            row = bench(config, family, state, mesh, name, target, batch, args.seconds,
                        args.repeats)
            print(f"{Path(args.config).stem} | {row['sampler']} | {row['NFE']} | "
                  f"{row['batch']} | {row['compile s']:.1f} | {row['samples/s']:.1f}",
                  flush=True)
    except UserError as err:
        sys.exit(f"bench_sample.py: error: {err}")


if __name__ == "__main__":
    main()
