"""What a long sampling request tells its user: after the first batch, an estimate of the
whole draw and what an interrupted run keeps; then a progress line every minute, on a
terminal or not (a batch job's log). Short draws stay quiet."""

from __future__ import annotations

import time

from absl import logging

from training.monitor import format_duration

# A draw expected to finish sooner than this gets no estimate or progress lines.
QUIET_BELOW_S = 30.0
PROGRESS_EVERY_S = 60.0


class SamplingReport:
    """Call `batch_done(i)` after batch i (0-based) of `num_batches` completes."""

    def __init__(self, num_samples: int, num_batches: int, batch_size: int):
        self.num_samples, self.num_batches, self.batch_size = num_samples, num_batches, batch_size
        self._start = self._last_line = time.perf_counter()
        self._first_done: float | None = None
        self._loud = False

    def _eta(self, done: int, now: float) -> float:
        """The remaining time at the rate since the first batch (compilation excluded),
        or, after the first batch alone, at its own rate (compilation included)."""
        if done > 1 and self._first_done is not None:
            rate = (now - self._first_done) / (done - 1)
        else:
            rate = now - self._start
        return rate * (self.num_batches - done)

    def batch_done(self, index: int) -> None:
        done, now = index + 1, time.perf_counter()
        if done == 1:
            self._first_done = now
            remaining = self._eta(done, now)
            self._loud = remaining >= QUIET_BELOW_S
            if self._loud:
                logging.info(
                    "Sampling %d samples in %d batches of %d: the first batch took %s "
                    "(compilation included); about %s more for the rest. The samples are "
                    "written when all are drawn: an interrupted run keeps none of them "
                    "(ask for fewer with --num_samples, or run several with other --seed)",
                    self.num_samples, self.num_batches, self.batch_size,
                    format_duration(now - self._start), format_duration(remaining))
            self._last_line = now
            return
        if self._loud and (now - self._last_line >= PROGRESS_EVERY_S
                           or done == self.num_batches):
            self._last_line = now
            logging.info("sampling: %d/%d batches (%d samples), %s elapsed, ETA %s", done,
                         self.num_batches, min(done * self.batch_size, self.num_samples),
                         format_duration(now - self._start),
                         format_duration(self._eta(done, now)))
