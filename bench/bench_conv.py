"""Throughput of the U-Net's convolution implementations (a script, not a test).

    .venv/bin/python bench/bench_conv.py [--batch 128] [--steps 10] [--repeats 3]

Builds the ~6M-parameter digits U-Net (nf=64, ch_mult=(1, 2, 2), 2 res blocks, attention
at 4x4, 8x8x1 input) and times a train-step-like forward+backward (the gradient of a
denoising MSE with respect to all parameters, dropout on) under ``jax.jit``, after
compilation, for each implementation of the 3x3 and 1x1 convolutions. Prints images/s
(best of ``--repeats``, since a shared machine only ever makes a run slower).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax
import jax.numpy as jnp
from flax import nnx

from networks import param_count
from networks.layers import resolve_conv_impl
from networks.unet import UNet

BENCH_MODEL = dict(
    image_size=8, num_channels=1, nf=64, ch_mult=(1, 2, 2), num_res_blocks=2,
    attn_resolutions=(4,), dropout=0.1, resblock_type="biggan", embedding_type="positional",
)  # fmt: skip

# (label, 3x3 impl, 1x1 impl)
VARIANTS = (
    ("xla 3x3 + xla 1x1", "xla", "xla"),
    ("xla 3x3 + matmul 1x1", "xla", "matmul"),
    ("matmul 3x3 + matmul 1x1", "matmul", "matmul"),
)


def make_step(model: UNet):
    """A jitted (params, x, key) -> grads closure: what a training step computes."""
    graphdef, params = nnx.split(model)

    def loss(params, x, key):
        net = nnx.merge(graphdef, params)
        k_noise, k_t, k_drop = jax.random.split(key, 3)
        noise = jax.random.normal(k_noise, x.shape)
        t = jax.random.uniform(k_t, (x.shape[0],))
        out = net(x + noise, 999.0 * t, train=True, key=k_drop)
        return jnp.mean(jnp.square(out - noise))

    return params, jax.jit(jax.grad(loss))


def throughput(model: UNet, batch: int, steps: int, repeats: int) -> tuple[float, float]:
    """(compile seconds, best images/s over ``repeats`` runs of ``steps`` steps)."""
    params, step = make_step(model)
    x = jax.random.normal(jax.random.key(1), (batch, 8, 8, 1))
    t0 = time.perf_counter()
    jax.block_until_ready(step(params, x, jax.random.key(0)))
    compile_s = time.perf_counter() - t0
    best = 0.0
    for r in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            grads = step(params, x, jax.random.key(r * steps + i))
        jax.block_until_ready(grads)
        best = max(best, batch * steps / (time.perf_counter() - t0))
    return compile_s, best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    print(
        f"backend {jax.default_backend()}, {jax.device_count()} device(s), "
        f"{os.cpu_count()} cpu(s); conv_impl='auto' -> {resolve_conv_impl('auto')!r}"
    )
    print(f"model {BENCH_MODEL}")
    results = {}
    for label, conv_impl, nin_impl in VARIANTS:
        model = UNet(**BENCH_MODEL, conv_impl=conv_impl, nin_impl=nin_impl, rngs=nnx.Rngs(0))
        if not results:
            print(f"parameters: {param_count(model):,}")
        compile_s, ips = throughput(model, args.batch, args.steps, args.repeats)
        results[label] = ips
        print(
            f"  {label:26s} compile {compile_s:5.1f} s   {ips:7.1f} images/s "
            f"(fwd+bwd, batch {args.batch})",
            flush=True,
        )
    fastest = max(results, key=results.get)
    print(f"fastest here: {fastest}")


if __name__ == "__main__":
    main()
