"""What the integrity pass costs a save: a config's train state saved with and without the
digests and finiteness check (training/integrity.py), on this machine's devices.

    python bench/bench_save.py                       # digits_vp
    python bench/bench_save.py --config configs/cifar10_ddpmpp_vp.py --saves 4

Prints the state's size, the warm time of the pass alone, and for each variant the median
time a save blocks the loop and the time until it is on disk. "Without" replaces the pass
by one that reports every leaf finite with a constant digest, so the rest of the save is
the same. The parameters are freshly initialised: the cost depends on shapes, not values.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax

import configs
from training import checkpoint, integrity, sharding
from training.families import get_family


def _unchecked(tree) -> integrity.Inspection:
    names = tuple(str(i) for i in range(len(jax.tree.leaves(tree))))
    return integrity.Inspection(names, (True,) * len(names), ("0" * 16,) * len(names))


def _saves(config, state, count: int) -> tuple[float, float]:
    """Median (blocking, until written) seconds of `count` saves after a warm-up one."""
    ckpt = checkpoint.Checkpointer(tempfile.mkdtemp(), config)
    ckpt.save(1, state, {})
    ckpt.wait()
    blocking, written = [], []
    for step in range(2, 2 + count):
        start = time.perf_counter()
        ckpt.save(step, state, {})
        blocking.append(time.perf_counter() - start)
        ckpt.wait()
        written.append(time.perf_counter() - start)
    ckpt.close()
    return statistics.median(blocking), statistics.median(written)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/digits_vp.py")
    parser.add_argument("--saves", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2, help="alternations with/without")
    args = parser.parse_args()
    config = configs.load(args.config)
    family = get_family(config)
    mesh = sharding.make_mesh(config.sharding.mesh)
    abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
    placed = sharding.state_shardings(abstract, mesh, config.sharding.rules)
    state = sharding.place(family.init_state(jax.random.PRNGKey(0)), placed)
    leaves = jax.tree.leaves(state)
    print(f"{args.config}: {len(leaves)} arrays, "
          f"{sum(x.size * x.dtype.itemsize for x in leaves) / 2**20:.1f} MiB, "
          f"{mesh.size} {jax.devices()[0].platform} device(s)")
    integrity.inspect(state)  # compiled once, as at a run's first save
    start = time.perf_counter()
    for _ in range(10):
        integrity.inspect(state)
    print(f"integrity pass alone (warm): {(time.perf_counter() - start) * 100:.1f} ms")
    real = integrity.inspect
    for _ in range(args.rounds):
        for label, inspect in (("with digests", real), ("without", _unchecked)):
            checkpoint.integrity.inspect = inspect
            blocking, written = _saves(config, state, args.saves)
            print(f"{label:>12}: save blocks {blocking * 1e3:.0f} ms, on disk after "
                  f"{written * 1e3:.0f} ms (medians of {args.saves})")
    checkpoint.integrity.inspect = real


if __name__ == "__main__":
    main()
