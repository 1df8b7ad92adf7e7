"""Training throughput: images/s, FLOPs, MFU, compile seconds and peak memory, beside a
PyTorch peer.

    python bench/bench_train.py                      # default digits config + the 6M U-Net
    python bench/bench_train.py --only default --steps 50 --conv_impl xla
    python bench/bench_train.py --only cifar10 --dtype bfloat16 --peer bf16,tf32

Three models: the README's default (configs/digits_vp.py), a ~6M-parameter U-Net
(nf 64, ch_mult (1, 2, 2), 2 res blocks, batch 128, 8x8) and score_sde's DDPM++ on
CIFAR-10 (configs/cifar10_ddpmpp_vp.py, ~62M parameters, batch 128, 32x32). Each is timed
on the real train step (loss, gradients, Adam, EMA) after one compile; digits configs read
the real data pipeline's batches, cifar10 (no data offline) a few random batches of its
shape resident on the device, as the peer does.

``--peer MODES`` also runs bench/peers/torch_unet.py (a diffusers UNet2DModel of the same
structure, loss and optimizer) in the peers' venv, once per mode: ``bf16`` (autocast),
``tf32``, ``fp32``, each optionally ``+compile`` (torch.compile). The peer runs before
this process touches the accelerator, so both see all of its memory (bench/peer_runner.py
runs it and sets its rows beside ours). bench/README.md explains the columns.
"""

from __future__ import annotations

import time

_T0 = time.perf_counter()  # before the heavy imports: startup_s counts them, as the peer's

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import types  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import flax  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from peer_runner import (  # noqa: E402  (bench/, this script's directory)
    DEFAULT_PEER_PYTHON,
    PEER_MODES,
    peer_modes,
    run_peers,
    side_by_side,
)

from configs import cifar10_ddpmpp_vp, digits_vp  # noqa: E402
from data import pipeline  # noqa: E402
from networks import layers  # noqa: E402
from training import loop, sharding  # noqa: E402
from training.families import get_family  # noqa: E402
from training.families.diffusion import DiffusionFamily  # noqa: E402
from training.step import LeafStep  # noqa: E402

# Start-up that every config's process pays: the interpreter's imports (the peer counts its
# own the same way).
_IMPORT_S = time.perf_counter() - _T0


def _six_million_config() -> ml_collections.ConfigDict:
    config = digits_vp.get_config()
    config.model.nf = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.training.batch_size = 128
    return config


CONFIGS: dict[str, Callable[[], ml_collections.ConfigDict]] = {
    "default": digits_vp.get_config,
    "unet6m": _six_million_config,
    "cifar10": cifar10_ddpmpp_vp.get_config,
}
# Configs whose dataset is not available offline: fed random batches of their shape.
RANDOM_DATA = {"cifar10"}
# What the driver runs when no --only is given (cifar10 takes minutes to compile on CPU).
DEFAULT_RUN = ("default", "unet6m")


class _ShapeOnlyDiffusion(DiffusionFamily):
    """The diffusion family without a dataset: its data info comes from the config, so a
    config whose dataset is not prepared still builds (random batches stand in for it)."""

    def _data_info(self, config: ml_collections.ConfigDict) -> Any:
        size, chans = config.data.image_size, config.data.num_channels
        return types.SimpleNamespace(shape=(size, size, chans), num_classes=0)


def make_config(name: str, args: argparse.Namespace) -> ml_collections.ConfigDict:
    """`name`'s config with the command line's overrides (keys from configs/default.py)."""
    config = CONFIGS[name]()
    if args.conv_impl:
        config.model.conv_impl = args.conv_impl
    if args.batch:
        config.training.batch_size = args.batch
    if args.dtype:
        config.model.dtype = args.dtype
    if args.remat:
        config.model.remat = args.remat
    if args.grad_accum:
        config.training.grad_accum_steps = args.grad_accum
    return config


def _peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def _xla_flops(compiled: Any) -> float:
    """FLOPs of one call of a compiled function by XLA's cost analysis (a dict in recent
    jax, a list of one dict per computation in older ones); NaN if it has none."""
    cost = compiled.cost_analysis()
    if isinstance(cost, list | tuple):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", float("nan")))


def matmul_peak_tflops(dtype: str, repeats: int = 5) -> float:
    """Best TFLOP/s of a large jitted square matmul in `dtype`: the MFU denominator, as
    measured on this device (not a datasheet figure). f32 runs at XLA's default precision
    (TF32 on recent NVIDIA GPUs), as the train step does."""
    n = 4096 if jax.default_backend() in ("gpu", "tpu") else 1024
    key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(key_a, (n, n), dtype)
    b = jax.random.normal(key_b, (n, n), dtype)
    inner = 10  # several matmuls per call so dispatch overhead does not count

    @jax.jit
    def chain(a: jax.Array, b: jax.Array) -> jax.Array:
        def body(_, acc):
            # The scale keeps values finite; its cost is n^2 next to the matmul's n^3.
            return (acc @ b) * jnp.asarray(1.0 / np.sqrt(n), dtype)

        return jax.lax.fori_loop(0, inner, body, a)

    jax.block_until_ready(chain(a, b))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(chain(a, b))
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 * inner / best / 1e12


def _random_batches(config: ml_collections.ConfigDict, batch_sh: Any) -> Iterator[dict]:
    """Four random batches in [-1, 1] of the config's shape on the device, cycled."""
    size, chans, batch = (config.data.image_size, config.data.num_channels,
                          config.training.batch_size)
    rng = np.random.default_rng(0)
    pool = [
        {"image": jax.device_put(rng.uniform(-1, 1, (batch, size, size, chans)).astype(np.float32),
                                 batch_sh),
         "label": jax.device_put(np.zeros((batch,), np.int32), batch_sh)}
        for _ in range(4)
    ]
    i = 0
    while True:
        yield pool[i % len(pool)]
        i += 1


def _pipeline_batches(config: ml_collections.ConfigDict, batch_sh: Any) -> Iterator[dict]:
    it = pipeline.make_train_iterator(config.data, global_batch_size=config.training.batch_size,
                                      seed=0)
    for b in it:
        yield {k: jax.device_put(np.asarray(b[k]), batch_sh) for k in ("image", "label")}


def bench(name: str, args: argparse.Namespace) -> dict:
    """Our figures for config `name`: compile, throughput, FLOPs and memory."""
    t_begin = time.perf_counter()
    config = make_config(name, args)
    random_data = name in RANDOM_DATA or args.random_data
    if random_data and config.model.family == "diffusion":
        family = _ShapeOnlyDiffusion(config)
    else:
        family = get_family(config)
    mesh = sharding.make_mesh(config.sharding.mesh)
    key = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(family.init_state, key)
    state_sh = loop.state_shardings(abstract, mesh, config.sharding.rules)
    # The state is built and placed, and the step compiled, as training.loop does it.
    state = sharding.place(family.init_state(key), state_sh)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    batch_sh = sharding.batch_sharding(mesh)
    step_fn = LeafStep(family.train_step, state, state_sh, batch_sh, sharding.replicated(mesh),
                       layers.compiler_options(family.data_shape))
    state = step_fn.leaves(state)
    batches = (_random_batches if random_data else _pipeline_batches)(config, batch_sh)

    start = time.perf_counter()
    compiled = step_fn.jitted.lower(state, next(batches)).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, next(batches))  # warm-up
    jax.block_until_ready(metrics)
    # Imports, then build + compile + one step; any peer run before this is left out.
    startup_s = _IMPORT_S + time.perf_counter() - t_begin
    start = time.perf_counter()
    for _ in range(args.steps):
        state, metrics = compiled(state, next(batches))
    jax.block_until_ready(metrics)
    per_step = (time.perf_counter() - start) / args.steps
    flops = _xla_flops(compiled)
    peak_mem_mb = _peak_memory_mb()  # before the matmul timing allocates its own arrays
    dtype = config.model.dtype
    peak = matmul_peak_tflops(dtype)
    batch = config.training.batch_size
    return {
        "who": "ours", "config": name, "params": int(n_params), "batch": batch, "dtype": dtype,
        "conv_impl": config.model.conv_impl, "remat": config.model.remat,
        "grad_accum": config.training.grad_accum_steps, "data": "random" if random_data else "real",
        "compile_s": compile_s, "startup_s": startup_s, "s_per_step": per_step,
        "img_per_s": batch / per_step, "flops_per_step": flops,
        "tflops_per_s": flops / per_step / 1e12, "peak_tflops": peak,
        "peak_mem_mb": peak_mem_mb, "loss": float(metrics["loss"]),
        "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
    }


def bench_with_peers(name: str, args: argparse.Namespace) -> list[dict]:
    """Our row and the peer's rows for `name`, with MFU and the ours/peer ratio."""
    config = make_config(name, args)
    modes = peer_modes(name, args, config.model.dtype)
    # Peers first: this process has not initialised the accelerator yet, so they get all
    # of its memory (JAX preallocates most of a GPU's once it starts).
    peers = run_peers(name, modes, args, config.training.batch_size)
    try:
        ours = bench(name, args)
    except Exception as err:  # a failed config (OOM at a large batch) still shows the peers
        ours = {"who": "ours", "config": name, "error": f"{type(err).__name__}: {err}"[:200]}
    return side_by_side(ours, peers, matmul_peak_tflops)


COLUMNS = (  # (header, width, format of the row's value)
    ("who", 16, "{}"), ("config", 8, "{}"), ("params", 11, "{:,}"), ("batch", 5, "{}"),
    ("dtype", 8, "{}"), ("compile_s", 9, "{:.1f}"), ("startup_s", 9, "{:.1f}"),
    ("s/step", 8, "{:.4f}"), ("img/s", 8, "{:.1f}"), ("GFLOP/step", 10, "{:.1f}"),
    ("TFLOP/s", 8, "{:.3f}"), ("MFU%", 6, "{:.1f}"), ("peak_MB", 8, "{:.0f}"),
    ("ours/peer", 9, "{:.2f}"),
)
_KEYS = {"s/step": "s_per_step", "img/s": "img_per_s", "GFLOP/step": "flops_per_step",
         "TFLOP/s": "tflops_per_s", "MFU%": "mfu", "peak_MB": "peak_mem_mb",
         "ours/peer": "ours_over_peer"}
_SCALE = {"GFLOP/step": 1e-9, "MFU%": 100.0}


def format_header() -> str:
    return " ".join(f"{h:>{w}}" if i > 1 else f"{h:{w}}" for i, (h, w, _) in enumerate(COLUMNS))


def format_row(row: dict) -> str:
    if "error" in row:
        return f"{row['who']:16} {row['config']:8} ERROR {row['error']}"
    cells = []
    for i, (head, width, fmt) in enumerate(COLUMNS):
        value = row.get(_KEYS.get(head, head))
        if isinstance(value, int | float) and head in _SCALE:
            value *= _SCALE[head]
        if value is None or (isinstance(value, float) and not np.isfinite(value)):
            text = "-"
        else:
            text = fmt.format(value)
        cells.append(f"{text:{width}}" if i < 2 else f"{text:>{width}}")
    return " ".join(cells)


def _describe(row: dict) -> str:
    """The device line printed above a config's rows."""
    if "error" in row:
        return f"# {row['config']}: ours failed"
    return (f"# {row['config']}: backend={row['backend']} device={row['device_kind']} "
            f"x{row['devices']}, data={row['data']}, conv_impl={row['conv_impl']}, "
            f"remat={row['remat']}, grad_accum={row['grad_accum']}, matmul peak "
            f"{row['dtype']}={row['peak_tflops']:.2f} TFLOP/s")


def _child_argv(args: argparse.Namespace) -> list[str]:
    """The flags that a per-config child process repeats."""
    argv = ["--steps", str(args.steps), "--peer_timeout", str(args.peer_timeout)]
    for flag in ("conv_impl", "batch", "dtype", "remat", "grad_accum", "peer"):
        value = getattr(args, flag)
        if value:
            argv += [f"--{flag}", str(value)]
    argv += ["--peer_python", args.peer_python] if args.peer_python else []
    argv += ["--random_data"] if args.random_data else []
    return argv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None,
                        help=f"one config in this process (default: each of {DEFAULT_RUN} "
                             "in its own process)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--conv_impl", choices=["auto", "xla", "matmul"], default=None)
    parser.add_argument("--batch", type=int, default=None, help="global batch (config's)")
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None,
                        help="model.dtype, the compute dtype (config's)")
    parser.add_argument("--remat", choices=["none", "block"], default=None,
                        help="model.remat (config's)")
    parser.add_argument("--grad_accum", type=int, default=None,
                        help="training.grad_accum_steps (config's)")
    parser.add_argument("--random_data", action="store_true",
                        help="random batches for every config, not only cifar10")
    parser.add_argument("--peer", nargs="?", const="auto", default=None,
                        help="also run the PyTorch peer: comma-separated modes of "
                             f"{PEER_MODES}, each optionally +compile; alone: our dtype")
    parser.add_argument("--peer_python", default=str(DEFAULT_PEER_PYTHON) if
                        DEFAULT_PEER_PYTHON.exists() else sys.executable,
                        help="the python that has torch and diffusers")
    parser.add_argument("--peer_timeout", type=float, default=900.0, help="seconds per peer run")
    parser.add_argument("--json", action="store_true", help="rows as JSON lines")
    args = parser.parse_args()

    if args.only is not None:
        rows = bench_with_peers(args.only, args)
        if args.json:
            for row in rows:
                print(json.dumps(row), flush=True)
            return
        print(_describe(rows[0]))
        print(format_header())
        for row in rows:
            print(format_row(row), flush=True)
        return

    # The driver never initialises a backend itself: on a GPU it would hold most of the
    # memory that its children need.
    print(f"jax={jax.__version__} flax={flax.__version__} (per-config processes; one row per "
          "run, ours/peer = our img/s over the peer's)")
    print(format_header(), flush=True)
    for name in DEFAULT_RUN:
        cmd = [sys.executable, __file__, "--only", name, "--json", *_child_argv(args)]
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env={**os.environ, "PYTHONUNBUFFERED": "1"})
        rows = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
        if proc.returncode or not rows:
            tail = " | ".join(proc.stderr.strip().splitlines()[-3:])
            print(f"{'ours':16} {name:8} ERROR {tail}", flush=True)
            continue
        print(_describe(rows[0]))
        for row in rows:
            print(format_row(row), flush=True)


if __name__ == "__main__":
    main()
