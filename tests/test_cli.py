"""train.py and sample.py end to end, as a user runs them (subprocesses, tiny config)."""

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests import cli_zygote, localhost_cluster

ROOT = Path(__file__).resolve().parents[1]
TINY = str(ROOT / "tests" / "configs" / "tiny.py")


def _env() -> dict[str, str]:
    """The user's environment: one CPU device (the 8 fake ones only slow compiles here)."""
    env = os.environ.copy()
    env["XLA_FLAGS"] = env.get("XLA_FLAGS", "").replace(
        "--xla_force_host_platform_device_count=8", ""
    )
    return env


def _run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS...` from the repository root as a user runs it (tests/cli_zygote.py)."""
    return cli_zygote.run(script, *args, env=_env(), timeout=timeout)


def _two_device_process_env() -> dict[str, str]:
    """The environment of a process with two CPU devices."""
    env = _env()
    env["XLA_FLAGS"] += " --xla_force_host_platform_device_count=2"
    return env


def _communicate(procs: list[subprocess.Popen], timeout: float = 400) -> list[str]:
    """The processes' stderr once they have exited; any left after `timeout` is killed."""
    try:
        return [p.communicate(timeout=timeout)[1] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


def _error_line(proc: subprocess.CompletedProcess, status: int = 1) -> str:
    assert proc.returncode == status, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, str]:
    workdir = tmp_path_factory.mktemp("run")
    proc = _run("train.py", f"--config={TINY}", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "Starting from scratch" in proc.stderr
    return workdir, proc.stderr


@pytest.fixture(scope="module")
def trained(trained_run) -> Path:
    return trained_run[0]


def _logged_loss(log: str, step: int) -> float:
    match = re.search(rf"step {step}: .*[ ,]loss=([-+.\deE]+)", log)
    assert match, log
    return float(match.group(1))


def test_train_then_sample_writes_uint8_images_and_a_grid(trained, tmp_path):
    out = tmp_path / "samples.npz"
    proc = _run(
        "sample.py",
        f"--config={TINY}",
        f"--workdir={trained}",
        "--num_samples=5",
        "--batch_size=4",
        f"--out={out}",
        "--steps=2",
    )
    assert proc.returncode == 0, proc.stderr
    images = np.load(out)["images"]
    assert images.dtype == np.uint8 and images.shape == (5, 8, 8, 1)
    assert (tmp_path / "samples.png").is_file()


def test_training_again_resumes_and_says_from_which_step(trained):
    proc = _run(
        "train.py", f"--config={TINY}", f"--workdir={trained}", "--config.training.n_iters=3"
    )
    assert proc.returncode == 0, proc.stderr
    assert "Resuming from checkpoint step 2" in proc.stderr
    assert (trained / "checkpoints" / "3").is_dir()


def test_misspelt_config_key_is_one_line_naming_it(tmp_path):
    proc = _run(
        "train.py", f"--config={TINY}", f"--workdir={tmp_path}", "--config.training.n_iter=3"
    )
    assert proc.returncode != 0
    assert "n_iter" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists()


def test_workdir_of_another_config_is_refused_and_left_alone(trained):
    before = sorted(p.name for p in (trained / "checkpoints").iterdir())
    proc = _run("train.py", f"--config={TINY}", f"--workdir={trained}", "--config.model.nf=16")
    assert proc.returncode == 1
    assert "another config" in _error_line(proc)
    assert sorted(p.name for p in (trained / "checkpoints").iterdir()) == before


@pytest.mark.parametrize(
    "flag, message",
    [
        ("--num_samples=0", "--num_samples must be positive"),
        ("--sampler=no_such_sampler", "no_such_sampler"),
        ("--steps=0", "--steps must be positive, got 0"),
        ("--guidance_scale=2", "--guidance_scale (classifier-free guidance) needs a class-"),
        ("--class_label=1", "--class_label needs a class-conditional model or a classifier"),
        ("--classifier_scale=2", "--classifier_scale needs a classifier"),
        ("--mask=mask.png", "--mask needs --image"),
        ("--colorize", "--colorize needs --image"),
        ("--edit_strength=0.5", "--edit_strength needs --image"),
    ],
)
def test_bad_sampling_request_is_one_line_and_writes_nothing(trained, tmp_path, flag, message):
    out = tmp_path / "s.npz"
    proc = _run("sample.py", f"--config={TINY}", f"--workdir={trained}", flag, f"--out={out}")
    assert message in _error_line(proc, status=2)  # a flag error
    assert list(tmp_path.iterdir()) == []


def test_sampling_an_empty_workdir_says_train_first(tmp_path):
    proc = _run("sample.py", f"--config={TINY}", f"--workdir={tmp_path}")
    assert proc.returncode == 1
    assert "train first" in _error_line(proc)


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    proc = subprocess.Popen(
        [
            sys.executable,
            str(ROOT / "train.py"),
            f"--config={TINY}",
            f"--workdir={tmp_path}",
            "--config.training.n_iters=100000",
            "--config.training.snapshot_freq=100000",
            "--config.training.snapshot_freq_for_preemption=100000",
        ],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    deadline = time.time() + 240
    lines = []
    for line in proc.stderr:  # wait until training is under way
        lines.append(line)
        if "step 3:" in line or time.time() > deadline:
            break
    proc.send_signal(signal.SIGTERM)
    _, rest = proc.communicate(timeout=120)
    log = "".join(lines) + rest
    assert proc.returncode == 0, log
    assert "SIGTERM: saved checkpoint at step" in log
    saved = [p.name for p in (tmp_path / "checkpoints").iterdir()]
    assert len(saved) == 1 and int(saved[0]) >= 3


def test_two_processes_on_localhost_train_like_one(tmp_path):
    """Multi-host through jax.distributed: 2 processes x 2 CPU devices train like one
    process on one device (same global batch, same noise). The toy MLP config keeps the
    three runs' compiles short; its data takes the same sharded grain path as the digits."""
    toy = f"{TINY}:toy"
    single = _run("train.py", f"--config={toy}", f"--workdir={tmp_path / 'single'}",
                  "--config.training.snapshot_sampling=False")
    assert single.returncode == 0, single.stderr
    env = _two_device_process_env()
    with localhost_cluster.coordinator_port() as port:
        procs = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "train.py"), f"--config={toy}",
                 f"--workdir={tmp_path / 'multi'}", f"--coordinator_address=127.0.0.1:{port}",
                 "--num_processes=2", f"--process_id={i}",
                 # The losses are what is compared; a sample grid would only add a compile.
                 "--config.training.snapshot_sampling=False"],
                cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env,
            )
            for i in range(2)
        ]
        logs = _communicate(procs)
    assert [p.returncode for p in procs] == [0, 0], logs
    assert (tmp_path / "multi" / "checkpoints" / "2").is_dir()
    # Compiled, not loaded from the session's persistent cache: on jax 0.12 a cached
    # multi-process CPU program hangs in its first collective (test_preemption's job would,
    # after this one).
    assert all("persistent compilation cache is off" in log for log in logs), logs
    # Process 0 reports; step 2's loss depends on step 1's update, so gradients agree too.
    for step in (1, 2):
        assert _logged_loss(logs[0], step) == pytest.approx(
            _logged_loss(single.stderr, step), rel=1e-3
        )


def _png(path: Path, pixels: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(pixels.squeeze(-1) if pixels.shape[-1] == 1 else pixels).save(path)
    return path


@pytest.mark.parametrize(
    "flags, message, status",
    [
        # flags that do not go together: exit 2
        (["--image=BIG"], "--image goes with exactly one of --mask (inpainting), --colorize", 2),
        (["--image=GRAY", "--mask=GRAY", "--colorize"], "got --mask, --colorize", 2),
        (["--image=GRAY", "--edit_strength=1.5"], "--edit_strength must lie in (0, 1], got 1.5",
         2),
        (["--image=GRAY", "--edit_strength=0"], "--edit_strength must lie in (0, 1], got 0", 2),
        (["--image=GRAY", "--colorize"], "--colorize needs an RGB model", 2),
        # files that do not fit the model: exit 1
        (["--image=BIG", "--edit_strength=0.5"], "is 16x16 with 1 channel; expected 8x8 with 1",
         1),
        (["--image=RGB", "--edit_strength=0.5"], "is 8x8 with 3 channels; expected 8x8 with 1",
         1),
        (["--image=GRAY", "--mask=BIG"], "must match the image: 8x8 with 1 channel(s)", 1),
        (["--image=GRAY", "--mask=missing.png"], "--mask file not found: missing.png", 1),
    ],
)
def test_bad_input_image_is_one_line_and_writes_nothing(trained, tmp_path, flags, message,
                                                         status):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    files = {
        "GRAY": _png(inputs / "gray.png", np.zeros((8, 8, 1), np.uint8)),
        "RGB": _png(inputs / "rgb.png", np.zeros((8, 8, 3), np.uint8)),
        "BIG": _png(inputs / "big.png", np.zeros((16, 16, 1), np.uint8)),
    }
    for name, path in files.items():
        flags = [f.replace(f"={name}", f"={path}") for f in flags]
    out = tmp_path / "out" / "s.npz"
    proc = _run("sample.py", f"--config={TINY}", f"--workdir={trained}", *flags, f"--out={out}")
    assert message in _error_line(proc, status)
    assert not out.parent.exists()


def test_two_processes_sample_like_one_and_only_process_zero_writes(trained, tmp_path):
    """sample.py in a multi-host job (2 processes x 2 CPU devices, a batch of 5 padded to 8
    over the 4 devices): the samples of one process on one device, written once."""
    flags = [f"--config={TINY}", f"--workdir={trained}", "--num_samples=5", "--steps=2",
             "--seed=1"]
    single = _run("sample.py", *flags, f"--out={tmp_path / 'single.npz'}")
    assert single.returncode == 0, single.stderr
    env = _two_device_process_env()
    out = tmp_path / "multi" / "samples.npz"
    with localhost_cluster.coordinator_port() as port:
        procs = [
            subprocess.Popen(
                [sys.executable, str(ROOT / "sample.py"), *flags, f"--out={out}",
                 f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
                 f"--process_id={i}"],
                cwd=ROOT, stderr=subprocess.PIPE, text=True, env=env,
            )
            for i in range(2)
        ]
        logs = _communicate(procs)
    assert [p.returncode for p in procs] == [0, 0], logs
    assert sorted(p.name for p in out.parent.iterdir()) == ["samples.npz", "samples.png"]
    assert "Wrote 5 samples" in logs[0] and "Wrote" not in logs[1]
    multi, one = np.load(out)["images"], np.load(tmp_path / "single.npz")["images"]
    assert multi.shape == one.shape == (5, 8, 8, 1)
    assert np.abs(multi.astype(int) - one.astype(int)).max() <= 1


def test_the_commands_of_every_test_share_one_fork_server(monkeypatch):
    """pytest names the running test in PYTEST_CURRENT_TEST; the harness's fork server must
    not start again for each name (it did: a second of imports per CLI test)."""
    servers = []
    for test_name in ("tests/test_a.py::test_one (call)", "tests/test_b.py::test_two (setup)"):
        monkeypatch.setenv("PYTEST_CURRENT_TEST", test_name)
        assert "--workdir" in _run("train.py", "--helpshort").stdout
        servers.append(set(cli_zygote._servers))
    assert servers[0] == servers[1]
