"""Checkpoints: orbax CheckpointManager over {train state, data iterator, config}.

Orbax writes each step to a temporary folder and renames it when complete, so a run
killed mid-save leaves the previous checkpoints as they were. We never delete or
overwrite a checkpoint we could not read: a bad workdir is reported, not repaired.

Every save records a digest of each array and of the data iterator's state
(`training/integrity.py`) and refuses a state with a NaN or an infinity; every restore
verifies the digests, so flipped bits are reported (`DamagedCheckpointError`) instead of
restored. A save that fails in the background is reported at the next `check_save`.
"""

import contextlib
import json
import logging
import os
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp

from data import paths
from errors import CheckpointError, DamagedCheckpointError, NonFiniteStateError, SaveFailedError
from training import integrity, save_failure, sharding

# Orbax splits a replicated array among its replicas so that each writes a part. For a small
# array that saves nothing and costs a compiled slice per array and device (over a thousand
# programs, seconds, on the first save with 8 devices): only arrays with at least 1 MiB per
# replica are split. Orbax warns of every override; this one is deliberate, so its warning
# is dropped (the absl logger is muted for the call only: verbosity is the user's).
_absl_logger = logging.getLogger("absl")
_was_disabled, _absl_logger.disabled = _absl_logger.disabled, True
try:
    ocp.type_handlers.register_type_handler(
        jax.Array,
        ocp.type_handlers.ArrayHandler(min_slice_bytes_for_replica_parallel=1 << 20),
        override=True,
    )
finally:
    _absl_logger.disabled = _was_disabled

# Config sections that fix the shapes and meaning of what a checkpoint holds. Changing
# anything else (n_iters, log_freq, sampler) and resuming is fine.
_IDENTITY_KEYS = ("model", "data.dataset", "data.image_size", "data.num_channels",
                  "data.centered", "training.sde", "training.continuous", "optim.optimizer",
                  "latent", "classifier.objective", "style.encoder", "style.content_layer",
                  "style.decoder_width")
# Entries of those sections that only say how to sample the model.
# Compute dtype and rematerialisation change how a step runs, not what it holds.
_NOT_IDENTITY = ("model.cluster_draws", "model.dtype", "model.remat")


def config_identity(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The flat {key: value} of the config entries a checkpoint depends on."""
    flat: dict[str, Any] = {}
    for key in _IDENTITY_KEYS:
        node = config
        for part in key.split("."):
            node = node[part]
        if isinstance(node, ml_collections.ConfigDict):
            for sub, value in node.items():
                flat[f"{key}.{sub}"] = value
        else:
            flat[key] = node
    if config.model.get("num_classes", 0):
        # Label dropout gives the network the null label's embedding: other shapes.
        dropout = float(config.training.get("class_dropout", 0.0))
        flat["training.class_dropout > 0"] = dropout > 0
    for key in _NOT_IDENTITY:
        flat.pop(key, None)
    # JSON round-trip so tuples and lists compare equal after a save/load.
    return json.loads(json.dumps(flat, default=str))


class Checkpointer:
    """Saves and restores a run's state in `<workdir>/checkpoints`.

    `workdir` is a local path or a bucket (`gs://...`, through `etils.epath`); every
    process of a multi-host run must see the same one. `read_only`: a reader (sample.py,
    evaluate.py) that creates and removes nothing. `owner`: the one writer (it holds the
    workdir lock), which removes what a killed save left behind (`N.orbax-checkpoint-tmp`).
    """

    def __init__(self, workdir: str | os.PathLike, config: ml_collections.ConfigDict, *,
                 read_only: bool = False, owner: bool = False):
        self.directory = paths.resolve(workdir) / "checkpoints"
        self.identity = config_identity(config)
        self._saving: int | None = None  # the step of a save that may still be running
        training = config.training
        options = ocp.CheckpointManagerOptions(
            max_to_keep=training.max_to_keep,
            keep_period=training.snapshot_freq,
            # A reader creates nothing (orbax's own read_only mode logs a warning at every
            # open, and a reader never calls save).
            create=not read_only,
            cleanup_tmp_directories=owner,
        )
        try:
            self._manager = ocp.CheckpointManager(self.directory, options=options)
        except (OSError, ValueError) as err:
            raise CheckpointError(f"cannot open checkpoints in {self.directory}: {err}") from err

    def latest_step(self) -> int | None:
        """The newest complete checkpoint's step, or None if there is none."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """The steps of every complete checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        """True at the step every process agreed to save at after a preemption notice.

        jax.distributed's preemption service catches SIGTERM on any host and settles on a
        step all processes reach; each must call this once per step, in step order. False
        without that service (one process, or jax_enable_preemption_service off).
        """
        return self._manager.reached_preemption(step)

    def check_identity(self, step: int, meta: dict | None = None) -> None:
        """Fails if the checkpoint at `step` (whose metadata `meta` the caller may have
        read already) was written by an incompatible config."""
        saved = (meta or self._read_meta(step))["identity"]
        diffs = [
            f"{k}: {saved.get(k)!r} in checkpoint vs {v!r} now"
            for k, v in self.identity.items()
            # A key newer than the checkpoint cannot be checked against it.
            if k in saved and saved[k] != v
        ]
        if diffs:
            raise CheckpointError(
                f"{self.directory} holds a checkpoint of another config ("
                + "; ".join(diffs[:3])
                + (f"; and {len(diffs) - 3} more" if len(diffs) > 3 else "")
                + "): use another --workdir"
            )

    def _read_meta(self, step: int) -> dict:
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(meta=ocp.args.JsonRestore())
            )
        except Exception as err:  # orbax raises many types for a damaged folder
            raise self._unreadable(step, err) from err
        if not isinstance(restored.meta, dict) or "identity" not in restored.meta:
            raise self._unreadable(step, ValueError("its metadata is not ours"))
        return restored.meta

    def _unreadable(self, step: int, err: Exception) -> DamagedCheckpointError:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return DamagedCheckpointError(
            f"checkpoint {self.directory / str(step)} cannot be read ({reason[:200]}); "
            "it was left as is", step)

    def _verify(self, step: int, meta: dict, item: str, restored: Any) -> None:
        """DamagedCheckpointError if `restored` (the item `item` of the checkpoint at
        `step`) differs from the digests saved with it. A checkpoint written before
        digests were recorded, or with digests of another `integrity.VERSION`, is taken
        as it is."""
        digests = meta.get("digests", {})
        saved = digests.get(item)
        if saved is None or digests.get("version") != integrity.VERSION:
            return
        if item == "data":
            if saved != integrity.json_digest(restored):
                raise DamagedCheckpointError(
                    f"checkpoint {self.directory / str(step)} is damaged: its data iterator "
                    "state differs from the digest saved with it; it was left as is", step)
            return
        bad = integrity.mismatched(saved, integrity.inspect(restored).digest_map())
        if bad:
            raise DamagedCheckpointError(
                f"checkpoint {self.directory / str(step)} is damaged: {len(bad)} of "
                f"{len(saved)} arrays of its {item} differ from the digests saved with them "
                f"({integrity.describe(bad)}); it was left as is", step)

    def save(self, step: int, state: Any, data_state: dict | None,
             statistics: dict | None = None) -> bool:
        """Saves (asynchronously) the state, the data iterator's state and the family's
        statistics (`families.base`: what the run read of its data when it started), with
        their digests. Returns False, writing nothing, if `step` holds a checkpoint already
        (a damaged one, left as is). NonFiniteStateError, writing nothing, for a state with
        a NaN or an infinity; SaveFailedError if the previous save failed or this one
        cannot start."""
        self.wait()  # orbax would wait for it too; this names its failure as its own
        inspection = integrity.inspect(state)
        bad = inspection.nonfinite()
        if bad:
            raise NonFiniteStateError(self._nonfinite_message(step, bad, len(inspection.names)))
        if step in self._manager.all_steps():
            logging.getLogger(__name__).warning(
                "step %d was not saved: %s holds a checkpoint of that step (a damaged one, "
                "left as is)", step, self.directory / str(step))
            return False
        data_state = data_state or {}
        digests = {"version": integrity.VERSION, "state": inspection.digest_map(),
                   "data": integrity.json_digest(data_state)}
        items = {"state": ocp.args.StandardSave(state), "data": ocp.args.JsonSave(data_state)}
        if statistics:
            items["statistics"] = ocp.args.StandardSave(statistics)
            digests["statistics"] = integrity.inspect(statistics).digest_map()
        items["meta"] = ocp.args.JsonSave({"identity": self.identity, "step": step,
                                           "has_statistics": bool(statistics),
                                           "digests": digests})
        self._saving = step
        try:
            self._manager.save(step, args=ocp.args.Composite(**items))
        except Exception as err:  # orbax raises OSError or ValueError
            raise self._save_failed(err) from err
        return True

    def _nonfinite_message(self, step: int, bad: list[str], total: int) -> str:
        kept = self.latest_step()
        where = (f"the newest checkpoint, step {kept} in {self.directory}, is kept as it was"
                 if kept is not None else "no checkpoint was written")
        return (f"the train state of step {step} has {len(bad)} of {total} arrays with a NaN "
                f"or an infinity ({integrity.describe(bad)}); it was not saved and training "
                f"stopped ({where}); try a lower optim.lr or optim.grad_clip")

    def check_save(self) -> None:
        """SaveFailedError if the last save has finished and failed; returns at once while
        it is still running (one host-side check: call it every step)."""
        if self._saving is None or self._manager.is_saving_in_progress():
            return
        self.wait()

    def wait(self) -> None:
        """Blocks until the saves under way have finished; SaveFailedError if one failed."""
        try:
            self._manager.wait_until_finished()
        except Exception as err:  # the background save's own error
            raise self._save_failed(err) from err
        self._saving = None

    def _save_failed(self, err: Exception) -> SaveFailedError:
        """The one-line report of a failed save, after removing its temporary folder."""
        step, self._saving = self._saving, None
        save_failure.remove_partial(self.directory, step)
        kept = [s for s in self._manager.all_steps() if s != step]
        return SaveFailedError(
            f"saving checkpoint {self.directory / str(step)} failed "
            f"({save_failure.cause(err)}; {save_failure.free_space(self.directory)}): "
            "training stopped, its partial folder removed; "
            + (f"the newest checkpoint is step {max(kept)}" if kept else "no checkpoint is saved"))

    def statistics(self, step: int) -> dict | None:
        """The family statistics saved at `step` ({} if the family has none), or None
        for a checkpoint written before checkpoints held them."""
        meta = self._read_meta(step)
        self.check_identity(step, meta)
        has = meta.get("has_statistics")
        if not has:
            return None if has is None else {}
        try:
            restored = self._manager.restore(
                step, args=ocp.args.Composite(statistics=ocp.args.StandardRestore()))
        except Exception as err:
            raise self._unreadable(step, err) from err
        self._verify(step, meta, "statistics", restored.statistics)
        return restored.statistics

    def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
        """Restores the state (placed by `abstract_state`'s shardings) and the data state,
        both verified against their digests (DamagedCheckpointError)."""
        meta = self._read_meta(step)
        self.check_identity(step, meta)
        try:
            restored = self._manager.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state),
                    data=ocp.args.JsonRestore(),
                ),
            )
        except Exception as err:
            raise self._unreadable(step, err) from err
        self._verify(step, meta, "state", restored.state)
        self._verify(step, meta, "data", restored.data)
        return restored.state, restored.data

    def close(self) -> None:
        """Finishes pending saves and releases the manager (SaveFailedError if the last
        save failed; the manager is released all the same)."""
        try:
            self.wait()
        finally:
            self._manager.close()


def abstract_with_shardings(abstract_tree: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs that tell orbax where each restored array goes."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings
    )


def check_has_checkpoints(workdir: str | os.PathLike) -> None:
    """CheckpointError if `workdir` holds no checkpoints folder (nothing was trained)."""
    if not (paths.resolve(workdir) / "checkpoints").is_dir():
        raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")


def saved_statistics(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                     step: int | None = None) -> dict | None:
    """The family statistics stored in `workdir`'s checkpoint at `step` (default: the
    newest), read without writing anything; None if there is no such checkpoint or it
    predates stored statistics (the caller then computes them). CheckpointError for a checkpoint of
    another config or one that cannot be read."""
    if not (paths.resolve(workdir) / "checkpoints").is_dir():
        return None
    ckpt = Checkpointer(workdir, config, read_only=True)
    try:
        step = ckpt.latest_step() if step is None else step
        if step not in ckpt.all_steps():  # restoring it is refused with the steps there are
            return None
        with _naming_the_others(ckpt):
            return ckpt.statistics(step)
    finally:
        ckpt.close()


@contextlib.contextmanager
def _naming_the_others(ckpt: Checkpointer):
    """A reader's DamagedCheckpointError, with the other steps it may read instead."""
    try:
        yield
    except DamagedCheckpointError as err:
        others = [s for s in ckpt.all_steps() if s != err.step]
        hint = (f"; the other saved steps are {', '.join(map(str, others))} "
                "(--checkpoint_step)" if others else "; it is the only checkpoint")
        raise DamagedCheckpointError(str(err) + hint, err.step) from err


def restore_run(config: ml_collections.ConfigDict, workdir: str | os.PathLike, family: Any,
                step: int | None = None, *, mesh: Any = None, devices=None) -> tuple[Any, int]:
    """(state, step) of `family` (the config's, built by the caller) from the newest
    checkpoint in `workdir` (or the one at `step`), placed as training places it: on `mesh`
    (default: `config.sharding.mesh` over `devices`, default all) with
    `config.sharding.rules`. A checkpoint restores onto any mesh.

    Raises CheckpointError if the workdir has no checkpoint (at `step`) or one of another
    config. Needs no family registry, so a family may restore another run (the latent
    diffusion family its VAE) through it.
    """
    check_has_checkpoints(workdir)
    if mesh is None:
        mesh = sharding.make_mesh(config.sharding.mesh, devices)
    ckpt = Checkpointer(workdir, config, read_only=True)
    try:
        if step is None:
            step = ckpt.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")
        elif step not in (saved := ckpt.all_steps()):
            raise CheckpointError(f"no checkpoint at step {step} in {workdir} (it has "
                                  f"{saved or 'none'})")
        abstract = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
        placed = sharding.state_shardings(abstract, mesh, config.sharding.rules)
        with _naming_the_others(ckpt):
            state, _ = ckpt.restore(step, abstract_with_shardings(abstract, placed))
    finally:
        ckpt.close()
    return state, step

