"""Cold start of a train step, phase by phase, as `training.loop` goes through them.

    python bench/cold_start.py                                   # CIFAR-10 DDPM++, batch 128
    python bench/cold_start.py --batch 8 --dtype bfloat16
    python bench/cold_start.py --config default        # bench_train.py's configs

Prints seconds for: imports, building the family, the abstract state (`eval_shape`),
tracing and lowering the step, the real state (built eagerly and placed with its shardings
while XLA compiles the step on another thread, as `training.loop` does), the rest of the
compile, and the first finished step; then the total from process start. `--serial`
compiles first and builds the state after it. The data is
random batches of the config's shape (`data.dataset` is set to `synthetic`, so nothing needs
preparing). Run it twice with the same `JAX_COMPILATION_CACHE_DIR` to see the cache at work.
"""

import time

_START = time.perf_counter()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(_HERE), _HERE]

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from bench_train import CONFIGS, make_config  # noqa: E402
from ml_collections import config_flags  # noqa: E402, F401 (config files import it)

from networks import layers  # noqa: E402
from training import loop, sharding  # noqa: E402
from training.checkpoint import abstract_with_shardings  # noqa: E402
from training.families import get_family  # noqa: E402
from training.step import LeafStep  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), default="cifar10")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default=None)
    parser.add_argument("--remat", choices=["none", "block"], default=None)
    parser.add_argument("--grad_accum", type=int, default=None)
    parser.add_argument("--conv_impl", choices=["auto", "xla", "matmul"], default=None)
    parser.add_argument("--serial", action="store_true",
                        help="compile first, then build the state (not while it is built)")
    args = parser.parse_args()

    phases: list[tuple[str, float]] = []
    mark = [time.perf_counter()]
    phases.append(("imports", mark[0] - _START))

    def lap(name: str) -> None:
        now = time.perf_counter()
        phases.append((name, now - mark[0]))
        mark[0] = now
        print(f"{name:>22}: {phases[-1][1]:7.1f} s", flush=True)

    print(f"backend={jax.default_backend()} devices={jax.device_count()} jax={jax.__version__}")
    print(f"{'imports':>22}: {phases[0][1]:7.1f} s", flush=True)
    config = make_config(args.config, args)
    config.data.dataset = "synthetic"
    family = get_family(config)
    lap("build family")
    mesh = sharding.make_mesh(config.sharding.mesh)
    key = jax.random.PRNGKey(config.seed)
    abstract = jax.eval_shape(family.init_state, key)
    state_sh = loop.state_shardings(abstract, mesh, config.sharding.rules)
    lap("abstract state")
    batch_sh = sharding.batch_sharding(mesh)
    step = LeafStep(family.train_step, abstract, state_sh, batch_sh, sharding.replicated(mesh),
                    layers.compiler_options(family.data_shape))
    b, s, c = config.training.batch_size, config.data.image_size, config.data.num_channels
    rng = np.random.default_rng(0)
    batch = {"image": jax.device_put(rng.uniform(-1, 1, (b, s, s, c)).astype(np.float32),
                                     batch_sh),
             "label": jax.device_put(rng.integers(0, 10, b).astype(np.int32), batch_sh)}
    placed = jax.tree.leaves(abstract_with_shardings(abstract, state_sh))
    if args.serial:
        lowered = step.jitted.lower(placed, batch)
        lap("trace + lower")
        compiled = lowered.compile()
        lap("compile")
        state = sharding.place(family.init_state(key), state_sh)
        jax.block_until_ready(state)
        lap("initial state")
        step_fn = compiled
    else:  # as training.loop does it
        step.compile_ahead(placed, batch)
        lap("trace + lower")
        state = sharding.place(family.init_state(key), state_sh)
        jax.block_until_ready(state)
        lap("initial state (compiling)")
        step.wait_compiled()
        lap("compile (the rest)")
        step_fn = step
    _, metrics = step_fn(step.leaves(state), batch)
    jax.block_until_ready(metrics)
    lap("first step")
    assert jnp.isfinite(metrics["loss"])
    total = time.perf_counter() - _START
    print(f"{'process start to step':>22}: {total:7.1f} s  (batch {b}, "
          f"{config.model.dtype}, remat {config.model.remat})", flush=True)


if __name__ == "__main__":
    main()
