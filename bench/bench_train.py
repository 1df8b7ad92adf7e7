"""Training throughput: compile seconds, seconds per step, images/s and peak memory.

    python bench/bench_train.py                      # default digits config + the 6M U-Net
    python bench/bench_train.py --only default --steps 50 --conv_impl xla

Two models: the README's default (configs/digits_vp.py) and a ~6M-parameter U-Net
(nf 64, ch_mult (1, 2, 2), 2 res blocks, batch 128, 8x8), the size used to compare
with PyTorch. Each is timed on the real train step (loss, gradients, Adam, EMA) over the
real data pipeline's batches, after one compile. Peak memory is the process's maximum
resident set size on CPU (the device allocator's peak elsewhere).
"""

import argparse
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import flax
import jax
import numpy as np

from configs import digits_vp
from data import pipeline
from training import loop, sharding
from training.families import get_family


def _six_million_config():
    config = digits_vp.get_config()
    config.model.nf = 64
    config.model.ch_mult = (1, 2, 2)
    config.model.num_res_blocks = 2
    config.training.batch_size = 128
    return config


CONFIGS = {"default": digits_vp.get_config, "unet6m": _six_million_config}


def _peak_memory_mb() -> float:
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
        return stats["peak_bytes_in_use"] / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes


def bench(name: str, steps: int, conv_impl: str | None) -> dict:
    config = CONFIGS[name]()
    if conv_impl:
        config.model.conv_impl = conv_impl
    family = get_family(config)
    mesh = sharding.make_mesh(config.sharding.mesh)
    key = jax.random.PRNGKey(0)
    abstract = jax.eval_shape(family.init_state, key)
    state_sh = loop.state_shardings(abstract, mesh, config.sharding.rules)
    state = jax.jit(family.init_state, out_shardings=state_sh)(key)
    n_params = sum(x.size for x in jax.tree.leaves(state.params))
    batch_sh = sharding.batch_sharding(mesh)
    step_fn = jax.jit(family.train_step, in_shardings=(state_sh, batch_sh),
                      out_shardings=(state_sh, sharding.replicated(mesh)), donate_argnums=(0,))
    it = pipeline.make_train_iterator(config.data, global_batch_size=config.training.batch_size,
                                      seed=0)
    put = lambda b: {k: jax.device_put(np.asarray(b[k]), batch_sh) for k in ("image", "label")}

    start = time.perf_counter()
    compiled = step_fn.lower(state, put(next(it))).compile()
    compile_s = time.perf_counter() - start
    state, metrics = compiled(state, put(next(it)))  # warm-up
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = compiled(state, put(next(it)))
    jax.block_until_ready(metrics)
    per_step = (time.perf_counter() - start) / steps
    return {
        "config": name, "params": n_params, "batch": config.training.batch_size,
        "conv_impl": config.model.conv_impl, "compile_s": compile_s, "s_per_step": per_step,
        "images_per_s": config.training.batch_size / per_step, "peak_mem_mb": _peak_memory_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(CONFIGS), default=None)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--conv_impl", choices=["auto", "xla", "matmul"], default=None)
    args = parser.parse_args()
    print(f"backend={jax.default_backend()} devices={jax.device_count()} "
          f"jax={jax.__version__} flax={flax.__version__}")
    print(f"{'config':8} {'params':>9} {'batch':>5} {'conv':>6} {'compile_s':>9} "
          f"{'s/step':>7} {'images/s':>8} {'peak_MB':>8}")
    if args.only is None:  # one process per model, so each peak memory is its own
        for name in sorted(CONFIGS):
            cmd = [sys.executable, __file__, "--only", name, "--steps", str(args.steps)]
            cmd += ["--conv_impl", args.conv_impl] if args.conv_impl else []
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            print(out.splitlines()[-1], flush=True)
        return
    for name in [args.only]:
        r = bench(name, args.steps, args.conv_impl)
        print(f"{r['config']:8} {r['params']:>9,} {r['batch']:>5} {r['conv_impl']:>6} "
              f"{r['compile_s']:>9.1f} {r['s_per_step']:>7.4f} {r['images_per_s']:>8.0f} "
              f"{r['peak_mem_mb']:>8.0f}", flush=True)


if __name__ == "__main__":
    main()
