"""Preemption: SIGTERM to one host of a multi-host run stops every host at the same step,
with one checkpoint that restores; on one process the signal is a flag between steps."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np

from tests import localhost_cluster
from tests.configs import tiny
from training import loop, sharding
from training import termination as termination_lib
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.families import get_family

ROOT = Path(__file__).resolve().parents[1]
TOY = f"{ROOT / 'tests' / 'configs' / 'tiny.py'}:toy"


def _env() -> dict[str, str]:
    """Two CPU devices per process, as in test_cli's multi-host test."""
    env = os.environ.copy()
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", "--xla_force_host_platform_device_count=2"
    )
    return env


def _wait_for(path: Path, pattern: str, procs, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if re.search(pattern, path.read_text()):
            return
        assert all(p.poll() is None for p in procs), path.read_text()
        time.sleep(0.2)
    raise AssertionError(f"{pattern!r} never appeared: {path.read_text()[-3000:]}")


def _train_two_processes_and_stop_one(workdir: Path, logs: list[Path], port: int) -> list[int]:
    """Two train.py processes (2 CPU devices each) on `port`; SIGTERM to process 1 once
    process 0 has logged step 3; their exit codes (killed if still running after that)."""
    procs = []
    try:
        for i, log in enumerate(logs):
            with log.open("w") as stderr:
                procs.append(subprocess.Popen(
                    [sys.executable, str(ROOT / "train.py"), f"--config={TOY}",
                     f"--workdir={workdir}", f"--coordinator_address=127.0.0.1:{port}",
                     "--num_processes=2", f"--process_id={i}",
                     "--config.training.n_iters=1000000",
                     "--config.training.snapshot_freq=1000000",
                     "--config.training.snapshot_freq_for_preemption=1000000",
                     "--config.training.snapshot_sampling=False"],
                    cwd=ROOT, stderr=stderr, text=True, env=_env(),
                ))
        # Process 0 reports every step; once it is at step 3 both are past compilation.
        _wait_for(logs[0], r"step 3: ", procs, timeout=300)
        # Process 1 reports nothing: process 0 learns of the signal only through
        # jax.distributed's preemption service.
        procs[1].send_signal(signal.SIGTERM)
        return [p.wait(timeout=120) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def test_sigterm_to_one_of_two_hosts_saves_both_at_the_same_step(tmp_path):
    workdir = tmp_path / "run"
    logs = [tmp_path / f"process_{i}.log" for i in range(2)]
    with localhost_cluster.coordinator_port() as port:
        codes = _train_two_processes_and_stop_one(workdir, logs, port)
    texts = [log.read_text() for log in logs]
    assert codes == [0, 0], texts
    stops = [re.findall(r"SIGTERM: saved checkpoint at step (\d+) and stopped", t) for t in texts]
    assert len(stops[0]) == len(stops[1]) == 1, texts
    assert stops[0] == stops[1], stops
    step = int(stops[0][0])
    assert step >= 3
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == [str(step)]
    # The checkpoint restores here (one process, 8 devices), as loop.run would resume it:
    # the step and the data position.
    config = tiny.get_config("toy")
    abstract = jax.eval_shape(get_family(config).init_state, jax.random.PRNGKey(config.seed))
    mesh = sharding.make_mesh(config.sharding.mesh)
    shardings = loop.state_shardings(abstract, mesh, config.sharding.rules)
    ckpt = Checkpointer(workdir, config)
    state, data_state = ckpt.restore(step, abstract_with_shardings(abstract, shardings))
    ckpt.close()
    assert int(state.step) == step
    assert data_state  # the iterator's position, so the resumed run reads the next batches
    assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(jax.device_get(state.params)))


def test_one_process_turns_sigterm_into_a_stop_between_steps():
    def never(step: int) -> bool:
        raise AssertionError("one process never asks the preemption service")

    with termination_lib.TerminationRequest(never) as termination:
        assert not termination.check(1)
        os.kill(os.getpid(), signal.SIGTERM)
        assert termination.check(2)
        assert termination.check(3)  # stays set
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
