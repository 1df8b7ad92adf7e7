"""Checkpoints: round trip, the identity guard, and damaged folders left as they were."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from errors import CheckpointError
from tests.configs import tiny
from training.checkpoint import Checkpointer


def _state(value: float):
    return {"params": {"w": jnp.full((3, 2), value)}, "step": jnp.asarray(int(value))}


def _abstract():
    return jax.eval_shape(lambda: _state(0.0))


def test_round_trip_restores_state_and_data_iterator_state(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {"epoch": 0, "position": 16})
    ckpt.save(2, _state(2.0), {"epoch": 0, "position": 32})
    ckpt.wait()
    assert ckpt.latest_step() == 2
    state, data_state = ckpt.restore(2, _abstract())
    np.testing.assert_array_equal(state["params"]["w"], np.full((3, 2), 2.0))
    assert data_state == {"epoch": 0, "position": 32}
    ckpt.close()


def test_keeps_the_last_few_plus_the_periodic_snapshots(tmp_path):
    config = tiny.get_config()
    config.training.max_to_keep = 2
    config.training.snapshot_freq = 4
    ckpt = Checkpointer(tmp_path, config)
    for step in range(1, 10):
        ckpt.save(step, _state(step), {})
    ckpt.close()
    assert sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()) == [4, 8, 9]


def test_a_checkpoint_of_another_config_is_refused_by_name(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.close()
    other = tiny.get_config()
    other.model.nf = 16
    with pytest.raises(CheckpointError, match=r"another config .*model.nf: 8 in checkpoint vs 16"):
        Checkpointer(tmp_path, other).restore(1, _abstract())


def test_a_damaged_checkpoint_is_reported_and_left_in_place(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.close()
    state_dir = tmp_path / "checkpoints" / "1" / "state"
    shutil.rmtree(state_dir)
    state_dir.mkdir()
    with pytest.raises(CheckpointError, match=r"cannot be read .*left as is"):
        Checkpointer(tmp_path, tiny.get_config()).restore(1, _abstract())
    assert (tmp_path / "checkpoints" / "1").is_dir()


def test_a_half_written_checkpoint_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.close()
    # What a save killed mid-write leaves: orbax's temporary folder, never renamed.
    partial = tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp-123"
    partial.mkdir()
    (partial / "junk").write_text("partial")
    assert Checkpointer(tmp_path, tiny.get_config()).latest_step() == 1


def test_label_dropout_on_or_off_is_part_of_a_conditional_checkpoint(tmp_path):
    """Label dropout adds the null label's embedding, so switching it on or off names
    class_dropout instead of failing to read the parameters; another rate is fine."""
    config = tiny.get_config()
    config.model.num_classes = 10
    config.training.class_dropout = 0.1
    ckpt = Checkpointer(tmp_path, config)
    ckpt.save(1, _state(1.0), {})
    ckpt.close()
    config.training.class_dropout = 0.2
    Checkpointer(tmp_path, config).check_identity(1)
    config.training.class_dropout = 0.0
    with pytest.raises(CheckpointError, match=r"class_dropout > 0: True in checkpoint vs False"):
        Checkpointer(tmp_path, config).restore(1, _abstract())


def test_a_key_the_checkpoint_predates_is_not_held_against_it(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.close()
    newer = Checkpointer(tmp_path, tiny.get_config())
    newer.identity = {**newer.identity, "model.added_later": 3}
    newer.check_identity(1)
