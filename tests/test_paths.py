"""Workdirs through etils.epath: local paths as epath.Path or strings train, checkpoint and
resume; a bucket without its file system installed is refused before anything is written."""

import logging
from pathlib import Path

import numpy as np
import pytest
from etils import epath
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from data import paths
from errors import UserError
from tests.configs import tiny
from training import loop
from training.checkpoint import Checkpointer


@pytest.fixture
def absl_messages():
    """What loop.run logs through absl, as a list of strings."""
    logger, messages = logging.getLogger("absl"), []

    class Keep(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_epath_then_relative_string_workdir_trains_checkpoints_and_resumes(
        tmp_path, monkeypatch, absl_messages):
    import jax

    config = tiny.get_config("toy")
    config.training.n_iters = 2
    config.training.snapshot_freq = 2
    workdir = tmp_path / "run"
    first = loop.run(config, epath.Path(workdir), devices=jax.devices()[:1])
    assert first["step"] == 2
    assert (workdir / "checkpoints" / "2").is_dir()
    assert (workdir / "samples" / "step_0000002.png").is_file()  # images.save_png via epath
    assert not list((workdir / "samples").glob("*.tmp"))
    assert (workdir / "config.json").is_file()

    monkeypatch.chdir(tmp_path)  # a relative string names the same folder
    config.training.n_iters = 3
    second = loop.run(config, "run", devices=jax.devices()[:1])
    assert second["step"] == 3 and np.isfinite(second["loss"])
    assert any(m.startswith("Resuming from checkpoint step 2 in ") and
               m.endswith(str(workdir / "checkpoints")) for m in absl_messages), absl_messages
    assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2", "3"]
    events = EventAccumulator(str(workdir))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3]


def test_bucket_workdir_without_gcsfs_is_one_line_before_anything_is_written(
        tmp_path, monkeypatch):
    monkeypatch.setattr(paths, "_installed", lambda module: False)
    monkeypatch.chdir(tmp_path)  # epath would make a local 'gs:' folder if it fell through
    config = tiny.get_config("toy")
    expected = (r"^the workdir 'gs://bucket/x' needs gs:// support: "
                r"pip install gcsfs \(or tensorflow\)$")
    with pytest.raises(UserError, match=expected):
        loop.run(config, "gs://bucket/x")
    with pytest.raises(UserError, match=expected):
        Checkpointer("gs://bucket/x", config)
    assert list(Path(tmp_path).iterdir()) == []


def test_bucket_workdir_with_its_file_system_is_an_epath(monkeypatch):
    monkeypatch.setattr(paths, "_installed", lambda module: module == "gcsfs")
    resolved = paths.resolve("gs://bucket/run")
    assert isinstance(resolved, epath.Path)
    assert str(resolved / "checkpoints") == "gs://bucket/run/checkpoints"
