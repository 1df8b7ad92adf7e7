"""The PyTorch peer beside bench_train.py: run bench/peers/torch_unet.py in its own
process (its own venv), parse the JSON line it prints, and set its rows beside ours (MFU
for each row, ours/peer for each peer row).

Nothing here touches the accelerator: peers run before bench_train.py's own process
initialises it, so both see all of its memory. The matmul peak that MFU divides by is
bench_train.py's measurement, passed in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PEER_SCRIPT = ROOT / "bench" / "peers" / "torch_unet.py"
DEFAULT_PEER_PYTHON = ROOT / ".venv-peers" / "bin" / "python"
PEER_MODES = ("bf16", "tf32", "fp32")
# The peer's shape for each of our configs (bench/peers/torch_unet.py --config).
PEER_SHAPES = {"unet6m": "unet6m", "cifar10": "cifar10"}


def run_peer(name: str, mode: str, args: argparse.Namespace, batch: int) -> dict:
    """The PyTorch peer in its own process (its own venv); `mode` as in --peer."""
    base, _, extra = mode.partition("+")
    if base not in PEER_MODES or extra not in ("", "compile"):
        raise SystemExit(f"--peer mode {mode!r}: expected one of {PEER_MODES}, optionally "
                         "with +compile")
    cmd = [args.peer_python, str(PEER_SCRIPT), "--config", PEER_SHAPES[name],
           "--batch", str(batch), "--steps", str(args.steps),
           "--dtype", "bfloat16" if base == "bf16" else "float32"]
    cmd += ["--tf32"] if base == "tf32" else []
    cmd += ["--compile"] if extra else []
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.peer_timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"who": f"peer:{mode}", "config": name, "error": " | ".join(tail)}
    result = json.loads(lines[-1])
    return {**result, "who": f"peer:{mode}", "config": name, "mode": mode,
            "dtype": "bfloat16" if base == "bf16" else "float32", "compile_s": float("nan")}


def _requested_modes(args: argparse.Namespace, dtype: str) -> list[str]:
    if args.peer is None:
        return []
    if args.peer == "auto":  # the peer in our dtype: bf16, or f32 as XLA runs it (TF32)
        return ["bf16" if dtype == "bfloat16" else "tf32"]
    return [m.strip() for m in args.peer.split(",") if m.strip()]


def peer_modes(name: str, args: argparse.Namespace, dtype: str) -> list[str]:
    """The --peer modes to run for config `name` (none if it has no peer); SystemExit if
    the peer's python is missing."""
    modes = _requested_modes(args, dtype)
    if modes and name not in PEER_SHAPES:  # the digits default: nothing to compare with
        modes = []
    if modes and not Path(args.peer_python).exists():
        raise SystemExit(f"--peer: no python at {args.peer_python}; install the peers' venv "
                         "(bench/README.md) or pass --peer_python")
    return modes


def run_peers(name: str, modes: list[str], args: argparse.Namespace, batch: int) -> list[dict]:
    """The peer's row for each mode, each printed as soon as it is done."""
    peers = []
    for mode in modes:
        peers.append(run_peer(name, mode, args, batch))
        # Streamed at once: if ours is then cut short (a timeout), the peer's figure stays.
        done = peers[-1]
        print(f"# {done['who']} {name}: " + (f"error: {done['error']}" if "error" in done else
              f"{done['img_per_s']:.1f} img/s, {done['tflops_per_s']:.3f} TFLOP/s, "
              f"{done['peak_mem_mb']:.0f} MB"), flush=True)
    return peers


def side_by_side(ours: dict, peers: list[dict],
                 matmul_peak_tflops: Callable[[str], float]) -> list[dict]:
    """`[ours, *peers]` with each row's MFU (against the matmul peak of its dtype, ours
    measured in bench(), others by `matmul_peak_tflops`) and each peer's ours/peer ratio."""
    peaks: dict[str, float] = {}
    if "error" not in ours:
        peaks[ours["dtype"]] = ours["peak_tflops"]
    for row in [ours, *peers]:
        if "error" in row:
            continue
        if row["dtype"] not in peaks:
            peaks[row["dtype"]] = matmul_peak_tflops(row["dtype"])
        row["peak_tflops"] = peaks[row["dtype"]]
        row["mfu"] = row["tflops_per_s"] / row["peak_tflops"]
        if row is not ours and "error" not in ours:
            row["ours_over_peer"] = ours["img_per_s"] / row["img_per_s"]
    return [ours, *peers]
