"""`train.py --dry_run`: the train step built and compiled abstractly, its figures printed,
nothing trained or written."""

import io
import os
from pathlib import Path

import jax

from tests import cli_zygote
from tests.configs import tiny
from training import dry_run

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_prints_the_parameters_and_memory_and_writes_no_checkpoint(tmp_path):
    workdir = tmp_path / "run"
    env = os.environ.copy()  # one CPU device, as a user has it
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "")
    proc = cli_zygote.run(
        "train.py", f"--config={ROOT / 'tests/configs/tiny.py'}", f"--workdir={workdir}",
        "--dry_run", timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "parameters: " in out and "batch: image (16, 8, 8, 1), label (16,)" in out
    assert "state per device: " in out and "compiled train step, memory per device: " in out
    assert "temporaries" in out and "live total" in out
    assert not workdir.exists()  # no checkpoint, no config.json, no event file


def test_the_figures_are_per_device_on_a_mesh():
    config = tiny.get_config("vpsde")
    config.sharding.mesh = (("data", 2), ("fsdp", 1))
    text = io.StringIO()
    report = dry_run.dry_run(config, devices=jax.devices()[:2], out=text)
    assert report["parameters"] > 0
    assert report["batch"] == {"image": (16, 8, 8, 1), "label": (16,)}
    assert report["batch_per_device"] == {"image": (8, 8, 8, 1), "label": (8,)}
    state = report["state_bytes_per_device"]
    assert state["params"] == 4 * report["parameters"]  # float32, replicated over data
    assert state["opt_state"] > state["params"] and state["total"] > sum(
        state[k] for k in ("params", "opt_state", "ema_params"))  # plus step and rng
    memory = report["step_memory"]
    assert memory["argument_size_in_bytes"] > 0 and report["step_live_bytes"] > 0
    assert "2 devices (cpu, 1 process), mesh data=2 x fsdp=1" in text.getvalue()
