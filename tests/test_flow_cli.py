"""configs/digits_rf.py (flow matching) through train.py and sample.py, as a user runs them:
train, resume, sample with the flow samplers, and the one-line refusal of a reverse-SDE
sampler (tiny sizes: tests/configs/tiny_rf.py)."""

from pathlib import Path

import numpy as np
import pytest

from tests.test_cli import ROOT, _error_line, _run

TINY_RF = str(ROOT / "tests" / "configs" / "tiny_rf.py")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("rf")
    proc = _run("train.py", f"--config={TINY_RF}", f"--workdir={workdir}")
    assert proc.returncode == 0, proc.stderr
    assert "Starting from scratch" in proc.stderr and "linear_path" in proc.stderr
    assert (workdir / "checkpoints" / "1").is_dir()
    return workdir


def test_digits_rf_resumes_and_samples_with_a_flow_sampler(trained, tmp_path):
    proc = _run("train.py", f"--config={TINY_RF}", f"--workdir={trained}",
                "--config.training.n_iters=2")
    assert proc.returncode == 0, proc.stderr
    assert "Resuming from checkpoint step 1" in proc.stderr
    out = tmp_path / "samples.npz"
    proc = _run("sample.py", f"--workdir={trained}", "--num_samples=3", "--batch_size=3",
                "--sampler=flow_heun", "--steps=2", f"--out={out}")
    assert proc.returncode == 0, proc.stderr
    samples = np.load(out)
    assert samples["images"].dtype == np.uint8 and samples["images"].shape == (3, 8, 8, 1)
    assert str(samples["sampler"]) == "flow_heun" and int(samples["nfe"]) == 2 * 2 + 1


@pytest.mark.parametrize("sampler", ["pc"])
def test_reverse_sde_sampler_is_refused_in_one_line_naming_it(trained, tmp_path, sampler):
    out = tmp_path / "samples.npz"
    proc = _run("sample.py", f"--workdir={trained}", "--num_samples=2",
                f"--sampler={sampler}", f"--out={out}")
    line = _error_line(proc, status=2)
    assert f"sampler {sampler!r}" in line and "flow_euler" in line
    assert not out.exists()
