"""Resuming a run whose newest checkpoint is damaged, and what the loop refuses to save:
the fault probe's cases (flipped bits, lr=1e39, a full disk), in process on the toy MLP."""

import logging
import re
import shutil

import jax
import pytest

from errors import DamagedCheckpointError, NonFiniteStateError, SaveFailedError
from tests.configs import tiny
from tests.damage import files, flip_bits
from training import checkpoint, loop
from training.families import get_family

ONE_DEVICE = jax.devices()[:1]


def _config(**training):
    config = tiny.get_config("toy")
    # 128 wide: each weight matrix fills a chunk file of its own, as a real model's do.
    config.model.hidden = 128
    config.training.snapshot_sampling = False
    config.training.snapshot_freq_for_preemption = 1
    for key, value in training.items():
        config.training[key] = value
    return config


@pytest.fixture(scope="module")
def two_steps(tmp_path_factory):
    """A run with checkpoints at steps 1 and 2, trained once for the module."""
    workdir = tmp_path_factory.mktemp("base") / "run"
    loop.run(_config(n_iters=2), workdir, devices=ONE_DEVICE)
    return workdir


@pytest.fixture
def damaged_latest(two_steps, tmp_path):
    workdir = tmp_path / "run"
    shutil.copytree(two_steps, workdir)
    flip_bits(workdir / "checkpoints" / "2", at=0.25)
    return workdir


def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(damaged_latest,
                                                                            caplog):
    damaged = files(damaged_latest / "checkpoints" / "2")
    with caplog.at_level(logging.WARNING):
        result = loop.run(_config(n_iters=3), damaged_latest, devices=ONE_DEVICE)
    assert result["step"] == 3
    warnings = caplog.text
    assert re.search(r"checkpoints/2 (is damaged|cannot be read)", warnings)
    assert "Resuming from step 1, the newest intact checkpoint" in warnings
    # Left in place, byte for byte; step 2 was not saved over it; step 3 was saved.
    assert files(damaged_latest / "checkpoints" / "2") == damaged
    assert sorted(p.name for p in (damaged_latest / "checkpoints").iterdir()) == ["1", "2", "3"]


def test_strict_refuses_a_damaged_latest_checkpoint_and_changes_nothing(damaged_latest):
    before = files(damaged_latest)
    # Flipped bits in array data fail the digests; in orbax's index, its own checksum.
    with pytest.raises(DamagedCheckpointError, match=r"checkpoints/2 (is damaged: \d+ of \d+ "
                       r"arrays|cannot be read) .*; --strict: not falling back"):
        loop.run(_config(n_iters=3), damaged_latest, devices=ONE_DEVICE, strict=True)
    assert files(damaged_latest) == before


def test_every_checkpoint_damaged_is_refused_in_one_line(damaged_latest):
    flip_bits(damaged_latest / "checkpoints" / "1", at=0.25)
    with pytest.raises(DamagedCheckpointError, match=r"every checkpoint in .* is damaged "
                       r"\(steps 1, 2\)"):
        loop.run(_config(n_iters=3), damaged_latest, devices=ONE_DEVICE)


def test_a_learning_rate_that_overflows_saves_nothing_and_says_so(tmp_path):
    config = _config(n_iters=2)
    config.optim.lr = 1e39  # float32 overflow: the first update makes the weights inf
    with pytest.raises(NonFiniteStateError, match=r"train state of step 1 has \d+ of \d+ arrays "
                       r"with a NaN or an infinity .*not saved .*no checkpoint was written"):
        loop.run(config, tmp_path, devices=ONE_DEVICE)
    assert list((tmp_path / "checkpoints").iterdir()) == []


def test_a_failed_save_stops_the_run_before_anything_else_is_written(small_disk):
    config = _config(n_iters=4, snapshot_freq=2, snapshot_sampling=True)
    with pytest.raises(SaveFailedError, match=r"saving checkpoint .*/checkpoints/1 failed \(No "
                       r"space left on device; [\d.]+ MiB free\): training stopped"):
        loop.run(config, small_disk, devices=ONE_DEVICE)
    assert list((small_disk / "checkpoints").iterdir()) == []  # no partial folder left
    assert not (small_disk / "samples").exists()  # no grid for a step that was not saved


def test_a_run_ending_on_its_damaged_step_says_it_could_not_save_it(damaged_latest):
    with pytest.raises(SaveFailedError, match=r"training reached step 2, but .*checkpoints/2 "
                       r"holds a damaged checkpoint.*the newest saved is step 1\): move it "
                       r"aside"):
        loop.run(_config(n_iters=2), damaged_latest, devices=ONE_DEVICE)


def test_sample_and_evaluate_refuse_a_damaged_checkpoint_naming_the_others(damaged_latest):
    """Readers never fall back on their own: they would sample another step than asked."""
    config = _config(n_iters=2)
    family = get_family(config)
    with pytest.raises(DamagedCheckpointError, match=r"checkpoints/2 (is damaged|cannot be "
                       r"read).* the other saved steps are 1 \(--checkpoint_step\)"):
        checkpoint.restore_run(config, damaged_latest, family, devices=ONE_DEVICE)
    _, step = checkpoint.restore_run(config, damaged_latest, family, 1, devices=ONE_DEVICE)
    assert step == 1
