"""What a run shows: TensorBoard event files, a console progress bar, log lines.

Only process 0 writes. Scalars are averaged over the steps since the last report. Each
report's log line ends with the progress, the throughput and an ETA (the remaining steps at
the rate since the last report), so a run off a terminal (a batch job's log) shows them too:
`step 400: loss=5.12, ... | 400/4000 steps, 6.9 steps/s, 442 images/s, ETA 8m41s`. The
workdir may be a bucket: tensorboardX writes `gs://` itself (with google-cloud-storage).
"""

import os
import time

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter

import progress


class Monitor:
    """TensorBoard + tqdm + absl logging, with throughput figures."""

    def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int,
                 global_batch: int, enabled: bool = True):
        self.enabled = enabled
        self.global_batch = global_batch
        self.total_steps = total_steps
        self._rate: float | None = None  # steps/s over the last report's interval
        # tensorboardX takes a string: a local folder or a gs:// / s3:// URL.
        # A resumed run in the same second would reuse the event file's name (seconds and
        # host) and overwrite the first run's curves: the suffix keeps each writer's file.
        suffix = f".{os.getpid()}.{time.time_ns()}"
        self._writer = (SummaryWriter(os.fspath(workdir), flush_secs=30, filename_suffix=suffix)
                        if enabled else None)
        # A bar on a terminal, nothing in CI logs (the log lines carry it all).
        self._bar = progress.bar(total=total_steps, initial=start_step, unit="step",
                                 show=enabled, leave=True)
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def reset_timer(self, step: int) -> None:
        """Starts throughput timing afresh (after compilation, say)."""
        self._last_step, self._last_time = step, time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, step: int, scalars: dict[str, float], *, trailer: str = ""
              ) -> dict[str, float]:
        """Logs scalars at `step` as they are (no rates): e.g. sample-quality metrics;
        `trailer` ends the log line (not TensorBoard)."""
        if self.enabled:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)
            shown = {k: v for k, v in scalars.items() if k not in _RATES} if trailer else scalars
            logging.info("step %d: %s%s", step,
                         ", ".join(f"{k}={v:.5g}" for k, v in sorted(shown.items())),
                         f" | {trailer}" if trailer else "")
        return scalars

    def progress_line(self, step: int) -> str:
        """'400/4000 steps, 6.9 steps/s, 442 images/s, ETA 8m41s' (rates once known)."""
        parts = [f"{step}/{self.total_steps} steps"]
        if self._rate:
            remaining = max(self.total_steps - step, 0) / self._rate
            parts += [f"{self._rate:.3g} steps/s", f"{self._rate * self.global_batch:.4g} images/s",
                      f"ETA {format_duration(remaining)}"]
        return ", ".join(parts)

    def report(self, step: int, scalars: dict[str, float]) -> dict[str, float]:
        """Logs scalars at `step`, adding steps/s and images/s since the last report."""
        now = time.perf_counter()
        steps = step - self._last_step
        if steps > 0:
            rate = self._rate = steps / max(now - self._last_time, 1e-9)
            scalars = {**scalars, "steps_per_sec": rate, "images_per_sec": rate * self.global_batch}
        self._last_step, self._last_time = step, now
        if self.enabled:
            # tqdm shows the rate and ETA itself.
            shown = {k: f"{v:.4g}" for k, v in scalars.items() if k not in ("lr", *_RATES)}
            self._bar.set_postfix(shown, refresh=False)
        return self.write(step, scalars, trailer=self.progress_line(step))

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        if self.enabled:
            self._writer.add_image(name, picture, step, dataformats="HWC")

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()


_RATES = ("steps_per_sec", "images_per_sec")  # shown in a report's trailer, not as k=v


def format_duration(seconds: float) -> str:
    """'41s', '8m41s', '3h05m', '2d04h'."""
    seconds = round(max(seconds, 0.0))
    minutes, secs = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"
