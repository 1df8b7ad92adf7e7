"""The teacher of a distillation run (`distill.teacher_workdir`): a trained diffusion run
(or, for reflow, a reflow run: Liu et al.'s k-rectified flows), restored read-only with its
own config.json, on the student's data and SDE.

Only training reads it (`prepare_training`): a distilled student samples alone, so its
checkpoints do not carry the teacher, and a resumed run restores the same teacher again.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from absl import logging

from errors import UserError
from training import checkpoint, run_config
from training.families.diffusion import DiffusionFamily
from training.run_config import SDE_PARAMETERS, differing

# What the teacher must share with the student: the data (its shape and range); and the
# forward SDE (run_config.SDE_PARAMETERS).
_SHARED_DATA = ("data.dataset", "data.image_size", "data.num_channels", "data.centered")


def workdir_of(config: ml_collections.ConfigDict, who: str) -> str:
    """`distill.teacher_workdir`, or a one-line UserError naming `who` needs it."""
    workdir = config.distill.teacher_workdir
    if not workdir:
        raise UserError(f"{who} needs a teacher: set distill.teacher_workdir to a trained "
                        "diffusion run (e.g. --config.distill.teacher_workdir=runs/digits_vp)")
    return workdir


# The families a teacher may be, by default: a score-SDE diffusion (or flow) run.
DIFFUSION_TEACHERS = {"diffusion": DiffusionFamily}


def check_compatible(teacher_config: ml_collections.ConfigDict,
                     config: ml_collections.ConfigDict, workdir: str,
                     families: Mapping[str, type] = DIFFUSION_TEACHERS) -> None:
    """UserError (one line) unless the teacher is an unconditional model of one of
    `families` (names), of the student's data shape and SDE."""
    family = teacher_config.model.family
    if family not in families:
        kinds = " or ".join(f"model.family={name!r}" for name in families)
        raise UserError(f"the teacher in {workdir} is model.family={family!r}; a teacher is a "
                        f"score-SDE diffusion run ({kinds})")
    if teacher_config.model.num_classes or teacher_config.model.self_condition_clusters:
        raise UserError(f"the teacher in {workdir} is conditional (model.num_classes="
                        f"{teacher_config.model.num_classes}, self_condition_clusters="
                        f"{teacher_config.model.self_condition_clusters}); distillation here "
                        "is of unconditional models")
    diffs = differing(_SHARED_DATA, teacher_config, config)
    if diffs:
        raise UserError(f"the teacher in {workdir} was trained on data of another shape or "
                        "range than the student's (teacher vs student: "
                        + "; ".join(diffs) + ")")
    sde = config.training.sde
    diffs = differing(("training.sde", *SDE_PARAMETERS.get(sde, ())), teacher_config, config)
    if diffs:
        raise UserError(f"the teacher in {workdir} was trained with another SDE than the "
                        "student's (teacher vs student: " + "; ".join(diffs) + ")")


@dataclasses.dataclass(frozen=True)
class Teacher:
    """A restored teacher: its `family` (a DiffusionFamily), its EMA `params` (host
    arrays, constants of the student's compiled step), the checkpoint `step` and
    `workdir`."""

    family: Any
    params: Any
    step: int
    workdir: str

    def score_fn(self):
        """The teacher's score ``s(x, t)`` on its SDE (pure JAX)."""
        return self.family.score_fn(self.params)

    def init_params(self, _key: jax.Array):
        """The teacher's weights as a student's initial parameters (an `init_params` for
        `single_network_state`; the key is unused)."""
        return jax.tree.map(jnp.asarray, self.params)


def restore(config: ml_collections.ConfigDict, who: str,
            families: Mapping[str, type] = DIFFUSION_TEACHERS) -> Teacher:
    """The teacher of `config` (its newest checkpoint, or `distill.teacher_step`), checked
    against the student; UserError (one line) for a missing or incompatible teacher.
    `families`: the family classes a teacher may be, by `model.family`."""
    workdir = workdir_of(config, who)
    teacher_config = run_config.read_run_config(workdir)
    if teacher_config is None:
        raise UserError(f"distill.teacher_workdir={workdir!r} holds no "
                        f"{run_config.CONFIG_FILE}: train the teacher with train.py first")
    check_compatible(teacher_config, config, workdir, families)
    # sample.py's restore path (inference.restore_latest), which imports every family.
    step = config.distill.teacher_step
    checkpoint.check_has_checkpoints(workdir)
    family = families[teacher_config.model.family](
        teacher_config, checkpoint.saved_statistics(teacher_config, workdir, step))
    state, step = checkpoint.restore_run(teacher_config, workdir, family, step)
    params = jax.device_get(family.sample_params(state))
    logging.info("Teacher: step %d of %s (%s)", step, workdir, teacher_config.training.sde)
    return Teacher(family=family, params=params, step=int(step), workdir=str(workdir))


# Training-time model keys a student that starts as its teacher may set otherwise.
TRAINING_TIME_MODEL_KEYS = ("family", "ema_rate", "dtype", "remat")


def check_same_network(teacher: Teacher, config: ml_collections.ConfigDict,
                       free: tuple[str, ...] = TRAINING_TIME_MODEL_KEYS) -> None:
    """UserError (one line, the first three differences) unless the student of `config`
    is the teacher's network, up to the `free` model keys: it starts as the teacher."""
    mine, theirs = config.model.to_dict(), teacher.family.config.model.to_dict()
    diffs = [f"model.{k}={theirs.get(k)!r} (teacher) vs {mine.get(k)!r}"
             for k in sorted(set(mine) | set(theirs))
             if mine.get(k) != theirs.get(k) and k not in free]
    if diffs:
        raise UserError(f"the teacher in {teacher.workdir} is another network than the "
                        "student, which starts as the teacher: " + "; ".join(diffs[:3]))

