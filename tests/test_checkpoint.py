"""Checkpoints: round trip, the identity guard, damaged folders (unreadable, or flipped bits
that the digests catch) left as they were, no non-finite state saved, failed saves reported."""

import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from errors import CheckpointError, DamagedCheckpointError, NonFiniteStateError, SaveFailedError
from tests.configs import tiny
from tests.damage import files, flip_bits
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


def _chunky_state(value: float = 0.0):
    """Large enough (16 KiB of noise) for orbax to store the array in a chunk file of its
    own rather than inline in its index."""
    noise = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    return {"params": {"w": jnp.asarray(noise + value)}, "step": jnp.asarray(int(value))}


def test_flipped_bits_in_a_chunk_file_are_reported_by_name_and_left_in_place(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _chunky_state(), {"epoch": 0})
    ckpt.close()
    step_dir = tmp_path / "checkpoints" / "1"
    flip_bits(step_dir)
    before = files(tmp_path)
    abstract = jax.eval_shape(_chunky_state)
    with pytest.raises(DamagedCheckpointError,
                       match=rf"checkpoint {step_dir} is damaged: 1 of 2 arrays .*\(params/w\)"):
        Checkpointer(tmp_path, tiny.get_config()).restore(1, abstract)
    assert files(tmp_path) == before


def test_a_changed_data_iterator_state_says_so(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {"grain": {"next_index": 16}, "pipeline": {"seed": 1}})
    ckpt.close()
    saved = next((tmp_path / "checkpoints" / "1" / "data").glob("*.json"), None) or next(
        p for p in (tmp_path / "checkpoints" / "1" / "data").rglob("*") if p.is_file())
    saved.write_text(saved.read_text().replace("16", "61"))
    with pytest.raises(DamagedCheckpointError, match="its data iterator state differs"):
        Checkpointer(tmp_path, tiny.get_config()).restore(1, _abstract())


def test_a_state_with_a_nan_or_inf_is_never_saved_and_the_message_says_what_was_kept(tmp_path):
    ckpt = Checkpointer(tmp_path, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.wait()
    bad = _state(2.0)
    bad["params"]["w"] = bad["params"]["w"].at[0, 0].set(jnp.inf)
    with pytest.raises(NonFiniteStateError, match=r"step 2 has 1 of 2 arrays with a NaN or an "
                       r"infinity \(params/w\); it was not saved .*the newest checkpoint, "
                       r"step 1 in .* is kept as it was"):
        ckpt.save(2, bad, {})
    ckpt.close()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["1"]


def test_a_save_that_fails_on_a_full_disk_is_reported_and_its_temporary_folder_removed(
        small_disk):
    ckpt = Checkpointer(small_disk, tiny.get_config())
    ckpt.save(1, _state(1.0), {})
    ckpt.wait()
    kept = files(small_disk / "checkpoints" / "1")
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 8192))  # leaves a few KiB
    with pytest.raises(SaveFailedError, match=r"saving checkpoint .*/checkpoints/2 failed \(No "
                       r"space left on device; [\d.]+ MiB free\).* the newest checkpoint is "
                       r"step 1"):
        ckpt.save(2, _chunky_state(2.0), {})
        ckpt.wait()
    ckpt.close()
    assert sorted(p.name for p in (small_disk / "checkpoints").iterdir()) == ["1"]
    assert files(small_disk / "checkpoints" / "1") == kept
