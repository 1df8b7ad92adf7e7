"""One 3x3 convolution at a time, ours against PyTorch's (a script, not a test).

    .venv/bin/python bench/conv_kernels.py [--batch 128] [--iters 30] \
        [--peer_python .venv-peers/bin/python]

For each shape of the 6M digits U-Net (bench/bench_train.py's `unet6m`: 8x8 maps of 64 and
128 channels, 4x4 and 2x2 maps of 128), times the forward pass, the input gradient and the
weight gradient of a stride-1 `networks.layers.Conv3x3` as the U-Net builds it, each jitted
alone with the compiler options the train step gets, and prints GFLOP/s. With
--peer_python the same file runs in the peer's venv (`--side torch`) and times torch's
Conv2d forward, and forward plus backward, on the same 2 threads. Whole steps hide where
time goes (XLA:CPU runs convolutions asynchronously, so a profile's convolution events are
only their launches); these figures say whether the kernels themselves are behind.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

SHAPES = ((8, 64), (8, 128), (4, 128), (2, 128))  # (map side, channels)


def _flops(batch: int, side: int, channels: int) -> float:
    return 2.0 * batch * side * side * 9 * channels * channels


def _best_seconds(call, iters: int, wait=lambda out: out) -> float:
    """Best of 5 rounds of `iters` calls, after a warm-up; `wait` blocks on the last result
    (jax.block_until_ready for JAX's asynchronous dispatch; eager torch on CPU needs none).
    Single kernels of a few ms swing by a third from run to run on a shared machine."""
    call()  # compile / warm up
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(iters):
            out = call()
        wait(out)
        best = min(best, (time.perf_counter() - start) / iters)
    return best


def ours(batch: int, iters: int) -> list[dict]:
    """Forward, input gradient and weight gradient of the zoo's `Conv3x3` as the U-Net builds
    it (impl 'auto': XLA's convolution, or the patches and one matmul on 2x2 maps), each
    jitted alone."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax
    from flax import nnx

    from networks.layers import Conv3x3, compiler_options

    rows = []
    for side, channels in SHAPES:
        graphdef, weights = nnx.split(Conv3x3(channels, channels, use_bias=False,
                                              rngs=nnx.Rngs(0)))

        def conv(x, weights, graphdef=graphdef):
            return nnx.merge(graphdef, weights)(x)

        def grad_x(x, weights, g, conv=conv):
            return jax.vjp(conv, x, weights)[1](g)[0]

        def grad_w(x, weights, g, conv=conv):
            return jax.vjp(conv, x, weights)[1](g)[1]

        options = compiler_options((side, side, 1))
        keys = jax.random.split(jax.random.key(0), 2)
        args = (jax.random.normal(keys[0], (batch, side, side, channels)), weights,
                jax.random.normal(keys[1], (batch, side, side, channels)))
        seconds = {}
        for name, fn, n_args in (("forward", conv, 2), ("grad_x", grad_x, 3),
                                 ("grad_w", grad_w, 3)):
            seconds[name] = _best_seconds(
                functools.partial(jax.jit(fn, compiler_options=options), *args[:n_args]), iters,
                jax.block_until_ready)
        rows.append({"side": side, "channels": channels, "seconds": seconds,
                     "all_three": sum(seconds.values())})
    return rows


def torch_side(batch: int, iters: int) -> list[dict]:
    """torch.nn.Conv2d on 2 threads: forward alone, and forward plus backward."""
    import torch

    torch.set_num_threads(2)

    def forward(conv, x, g):
        with torch.no_grad():
            return conv(x)

    def forward_backward(conv, x, g):
        conv(x).backward(g)

    rows = []
    for side, channels in SHAPES:
        args = (torch.nn.Conv2d(channels, channels, 3, padding=1),
                torch.randn(batch, channels, side, side, requires_grad=True),
                torch.randn(batch, channels, side, side))
        rows.append({"side": side, "channels": channels,
                     "seconds": {"forward": _best_seconds(functools.partial(forward, *args),
                                                          iters)},
                     "all_three": _best_seconds(functools.partial(forward_backward, *args),
                                                iters)})
    return rows


def _cell(flops: float, seconds: float) -> str:
    return f"{flops / seconds / 1e9:6.0f} ({1e3 * seconds:5.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--peer_python", default="", help="the peer venv's python")
    parser.add_argument("--side", choices=("ours", "torch"), default="ours",
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side == "torch":
        print(json.dumps(torch_side(args.batch, args.iters)))
        return
    peer = None
    if args.peer_python:  # first, so that the two never share the cores
        proc = subprocess.run([args.peer_python, os.path.abspath(__file__), "--side", "torch",
                               "--batch", str(args.batch), "--iters", str(args.iters)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.exit(f"conv_kernels.py: the peer failed: {proc.stderr.strip().splitlines()[-1]}")
        peer = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"batch {args.batch}, GFLOP/s (ms) of one 3x3 convolution; 'fwd+bwd' is forward, "
          "input gradient and weight gradient together")
    print(f"{'map':>9} | {'ours fwd':>14} {'grad x':>14} {'grad w':>14} {'fwd+bwd':>14}"
          + (f" | {'torch fwd':>14} {'fwd+bwd':>14} | ours/torch fwd+bwd time" if peer else ""))
    for i, row in enumerate(ours(args.batch, args.iters)):
        flops, s = _flops(args.batch, row["side"], row["channels"]), row["seconds"]
        shape = f"{row['side']}x{row['side']}x{row['channels']}"
        line = (f"{shape:>9} | {_cell(flops, s['forward'])} "
                f"{_cell(flops, s['grad_x'])} {_cell(flops, s['grad_w'])} "
                f"{_cell(3 * flops, row['all_three'])}")
        if peer:
            p = peer[i]
            line += (f" | {_cell(flops, p['seconds']['forward'])} "
                     f"{_cell(3 * flops, p['all_three'])} | "
                     f"{row['all_three'] / p['all_three']:.2f}")
        print(line)

if __name__ == "__main__":
    main()
