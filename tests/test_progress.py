"""Feedback on long work: progress bars (stderr, process 0, a terminal unless asked, results
unchanged), the training log line's steps/s and ETA, and what a run logs at its start."""

import logging

import jax
import numpy as np
import pytest

import progress
from evaluation.extractor import FeatureExtractor
from tests.configs import tiny
from training import loop
from training.monitor import Monitor, format_duration


@pytest.fixture(autouse=True)
def _default_setting(monkeypatch):
    monkeypatch.delenv(progress.ENV, raising=False)
    progress.set_enabled(None)
    yield
    progress.set_enabled(None)


def _extractor() -> FeatureExtractor:
    apply = lambda x: (x.reshape(len(x), -1)[:, :3].astype(np.float32),
                       np.zeros((len(x), 2), np.float32))
    return FeatureExtractor(name="fake", checksum="-", feature_dim=3, num_classes=2,
                            settings={}, apply_batch=apply, batch_size=4)


def test_a_bar_off_a_terminal_prints_nothing(capsys):
    assert not progress.enabled()  # pytest's captured stderr is not a terminal
    assert list(progress.bar(range(5), desc="sampling")) == list(range(5))
    with progress.bar(total=3) as manual:
        manual.update(3)
    assert capsys.readouterr().err == ""


def test_bars_are_asked_for_by_the_environment_or_code_and_only_on_process_0(monkeypatch):
    monkeypatch.setattr(progress, "_is_tty", lambda: True)
    assert progress.enabled()
    assert progress.bar(range(2), show=False).disable  # the caller's own condition
    monkeypatch.setenv(progress.ENV, "0")
    assert not progress.enabled()
    monkeypatch.setattr(progress, "_is_tty", lambda: False)
    monkeypatch.setenv(progress.ENV, "1")
    assert progress.enabled()
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    assert not progress.enabled()  # never on another process
    monkeypatch.undo()
    progress.set_enabled(False)
    monkeypatch.setattr(progress, "_is_tty", lambda: True)
    assert not progress.enabled()


def test_a_shown_bar_has_a_rate_and_eta_and_changes_no_result(capsys):
    images = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 1), dtype=np.uint8)
    quiet = _extractor()(images)
    capsys.readouterr()
    progress.set_enabled(True)
    shown = _extractor()(images)
    err = capsys.readouterr().err
    assert "fake features" in err and "3/3" in err and "batch/s" in err and "<" in err
    for a, b in zip(quiet, shown, strict=True):
        np.testing.assert_array_equal(a, b)


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (0, 41.4, 521, 3 * 3600 + 301, 2 * 86400 + 4 * 3600)] \
        == ["0s", "41s", "8m41s", "3h05m", "2d04h"]


def test_the_report_line_has_steps_per_second_and_an_eta(tmp_path, caplog, monkeypatch):
    clock = iter([0.0, 100.0])  # 400 steps in 100 s
    monkeypatch.setattr("training.monitor.time.perf_counter", lambda: next(clock))
    monitor = Monitor(tmp_path, total_steps=4000, start_step=0, global_batch=64)
    caplog.set_level(logging.INFO)
    scalars = monitor.report(400, {"loss": 5.12, "lr": 1e-4})
    monitor.close()
    assert scalars["steps_per_sec"] == pytest.approx(4.0)
    (line,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("step ")]
    assert line == ("step 400: loss=5.12, lr=0.0001 | 400/4000 steps, 4 steps/s, "
                    "256 images/s, ETA 15m00s")


def test_training_logs_its_start_and_rate_and_eta_at_each_report(tmp_path, caplog):
    config = tiny.get_config("vpsde")
    config.training.n_iters = 3
    config.training.snapshot_freq = 3
    config.training.snapshot_sampling = False
    caplog.set_level(logging.INFO)
    loop.run(config, tmp_path, devices=jax.devices()[:1])
    messages = [r.getMessage() for r in caplog.records]
    (start,) = [m for m in messages if m.startswith("Train state:")]
    assert "parameters, 1 device (cpu, 1 process), mesh data=1 x fsdp=1" in start
    (resolved,) = [m for m in messages if m.startswith("Config: {")]
    assert '"n_iters":3' in resolved
    steps = [m for m in messages if m.startswith("step ")]
    assert len(steps) == 3 and all(f"{i}/3 steps" in m for i, m in enumerate(steps, 1))
    # The first report follows compilation, which the rate leaves out; then rates and ETAs.
    assert "steps/s" in steps[1] and "ETA " in steps[1] and "ETA 0s" in steps[2]
    assert "loss=" in steps[1] and "steps_per_sec" not in steps[1]
