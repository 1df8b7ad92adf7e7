"""What a run shows: TensorBoard event files, a console progress bar, log lines.

Only process 0 writes. Scalars are averaged over the steps since the last report. The
workdir may be a bucket: tensorboardX writes `gs://` itself (with google-cloud-storage).
"""

import os
import time

import numpy as np
from absl import logging
from tensorboardX import SummaryWriter
from tqdm import tqdm


class Monitor:
    """TensorBoard + tqdm + absl logging, with throughput figures."""

    def __init__(self, workdir: str | os.PathLike, *, total_steps: int, start_step: int,
                 global_batch: int, enabled: bool = True):
        self.enabled = enabled
        self.global_batch = global_batch
        # tensorboardX takes a string: a local folder or a gs:// / s3:// URL.
        self._writer = SummaryWriter(os.fspath(workdir), flush_secs=30) if enabled else None
        # disable=None: a bar on a terminal, nothing in CI logs (the log lines carry it all).
        self._bar = tqdm(total=total_steps, initial=start_step, disable=None if enabled else True,
                         dynamic_ncols=True, unit="step")
        self._last_step = start_step
        self._last_time = time.perf_counter()

    def reset_timer(self, step: int) -> None:
        """Starts throughput timing afresh (after compilation, say)."""
        self._last_step, self._last_time = step, time.perf_counter()

    def advance(self, n: int = 1) -> None:
        self._bar.update(n)

    def write(self, step: int, scalars: dict[str, float]) -> dict[str, float]:
        """Logs scalars at `step` as they are (no rates): e.g. sample-quality metrics."""
        if self.enabled:
            for name, value in scalars.items():
                self._writer.add_scalar(name, value, step)
            logging.info("step %d: %s", step,
                         ", ".join(f"{k}={v:.5g}" for k, v in sorted(scalars.items())))
        return scalars

    def report(self, step: int, scalars: dict[str, float]) -> dict[str, float]:
        """Logs scalars at `step`, adding steps/s and images/s since the last report."""
        now = time.perf_counter()
        steps = step - self._last_step
        if steps > 0:
            rate = steps / max(now - self._last_time, 1e-9)
            scalars = {**scalars, "steps_per_sec": rate, "images_per_sec": rate * self.global_batch}
        self._last_step, self._last_time = step, now
        if self.enabled:
            shown = {k: f"{v:.4g}" for k, v in scalars.items() if k != "lr"}
            self._bar.set_postfix(shown, refresh=False)
        return self.write(step, scalars)

    def image(self, step: int, name: str, picture: np.ndarray) -> None:
        if self.enabled:
            self._writer.add_image(name, picture, step, dataformats="HWC")

    def close(self) -> None:
        self._bar.close()
        if self._writer is not None:
            self._writer.close()
