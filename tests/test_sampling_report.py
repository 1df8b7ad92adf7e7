"""A long sampling request says after its first batch how long the rest will take and that
an interrupted run keeps nothing, then shows progress every minute; a short one is quiet."""

import logging

import pytest

from training import sampling_report


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(sampling_report.time, "perf_counter", lambda: now[0])
    return now


def test_a_long_request_gets_an_estimate_then_progress_lines(clock, caplog):
    report = sampling_report.SamplingReport(10_000_000, 39_063, 256)
    with caplog.at_level(logging.INFO):
        clock[0] = 20.0  # the first batch, with its compilation
        report.batch_done(0)
        clock[0] = 23.0  # 3 s per batch from then on
        report.batch_done(1)
        clock[0] = 83.0
        report.batch_done(21)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2, lines
    assert lines[0].startswith("Sampling 10000000 samples in 39063 batches of 256: the first "
                               "batch took 20s (compilation included); about 9d01h more")
    assert "an interrupted run keeps none of them" in lines[0]
    assert lines[1].startswith("sampling: 22/39063 batches (5632 samples), 1m23s elapsed, "
                               "ETA 1d08h")


def test_a_short_request_stays_quiet(clock, caplog):
    report = sampling_report.SamplingReport(64, 2, 32)
    with caplog.at_level(logging.INFO):
        clock[0] = 5.0
        report.batch_done(0)
        clock[0] = 5.1
        report.batch_done(1)
    assert caplog.records == []
