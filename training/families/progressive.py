"""Progressive distillation as a training family (`model.family='progressive_distillation'`,
Salimans & Ho, 2022): one run halves the teacher's DDIM steps round after round, from
`progressive.teacher_steps` down to `progressive.student_steps`, a round every
`progressive.round_steps` training steps (the last round trains on to `training.n_iters`).

The student is the teacher's network (the same `model` section) and starts as the
teacher's EMA weights (`distill.teacher_workdir`, read when training starts). Round r
trains a student of teacher_steps / 2^(r+1) steps on the targets of round r's teacher: the
student's own weights frozen at the round's start (kept in the train state's `aux`, so a
resumed run continues exactly; round 0's are the teacher's). The optimiser is not reset
between rounds. Samples: DDIM in `sampling.steps` (sample.py --steps) steps, a power of two
from student_steps up to teacher_steps / 2 (what the rounds trained), on the grid of
`progressive.time_spacing` the rounds trained on.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion import progressive
from errors import UserError
from training import accumulate
from training.families import few_step
from training.families import teacher as teachers
from training.families.diffusion import DiffusionFamily
from training.state import TrainState, apply_gradients, single_network_state

OBJECTIVE = "progressive_distillation"
SAMPLER = "ddim"


class ProgressiveDistillationFamily(few_step.FewStepSampling, DiffusionFamily):
    """A progressively distilled student (see the module docstring); `teacher` is the
    restored teacher once `prepare_training` has run, else None."""

    teacher: teachers.Teacher | None = None
    SAMPLER = SAMPLER
    KIND = "progressively distilled student"

    def _build_objective(self, config: ml_collections.ConfigDict) -> None:
        super()._build_objective(_as_dsm(config))  # the SDE and preconditioning checks
        p = config.progressive
        if config.training.objective != OBJECTIVE:
            raise UserError(f"model.family='progressive_distillation' trains training."
                            f"objective={OBJECTIVE!r}, not {config.training.objective!r}")
        teachers.workdir_of(config, "progressive distillation")
        for key in ("teacher_steps", "student_steps"):
            if not progressive.is_power_of_two(p[key]):
                raise UserError(f"progressive.{key}={p[key]} must be a power of two")
        if not p.student_steps < p.teacher_steps:
            raise UserError(f"progressive.student_steps={p.student_steps} must be below "
                            f"progressive.teacher_steps={p.teacher_steps}")
        if p.time_spacing not in progressive.SPACINGS:
            raise UserError(f"progressive.time_spacing={p.time_spacing!r} is not one of "
                            f"{sorted(progressive.SPACINGS)}")
        if not p.round_steps >= 1:
            raise UserError(f"progressive.round_steps must be positive, got {p.round_steps}")
        few_step.check_unconditional(config)
        self._check_steps(int(config.sampling.steps), "sampling.steps", UserError, config)

    @staticmethod
    def rounds(config: ml_collections.ConfigDict) -> int:
        p = config.progressive
        return max((p.teacher_steps // p.student_steps).bit_length() - 1, 1)

    def _check_steps(self, steps: int, flag: str, error, config=None) -> None:
        """`error` (one line, naming `flag`) unless `steps` is a power of two the rounds
        trained: student_steps to teacher_steps / 2."""
        p = (config or self.config).progressive
        if not progressive.is_power_of_two(steps):
            raise error(f"{flag} {steps} is not a power of two: a progressively distilled "
                        f"student samples in {p.student_steps}, {2 * p.student_steps}, ... "
                        f"steps")
        if not p.student_steps <= steps <= p.teacher_steps // 2:
            raise error(f"{flag} {steps} is outside what this student supports: "
                        f"{p.student_steps} to {p.teacher_steps // 2} steps (powers of two)")

    def prepare_training(self) -> None:
        """Restores the teacher (UserError, one line, for a missing teacher, one of another
        data shape or SDE, or of another network: the student starts as the teacher)."""
        teacher = teachers.restore(self.config, "progressive distillation")
        teachers.check_same_network(teacher, self.config)
        self.teacher = teacher

    def init_state(self, key: jax.Array) -> TrainState:
        """The teacher's weights as the student, its EMA and round 0's teacher (`aux`)."""
        init = self.init_params if self.teacher is None else self.teacher.init_params
        state = single_network_state(key, init, self.tx)
        return state.replace(aux=jax.tree.map(jnp.copy, state.params))

    def _round(self, step):
        """(round, the student's steps in it) at training step `step` (may be traced)."""
        rounds = self.rounds(self.config)
        r = jnp.minimum(jnp.asarray(step) // self.config.progressive.round_steps, rounds - 1)
        return r, self.config.progressive.teacher_steps // 2 ** (r + 1)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_key, inputs = few_step.step_inputs(state, batch)
        teacher = self.score_fn(state.aux)
        _, steps = self._round(state.step)

        def objective(params, micro, index):
            key = few_step.micro_key(dropout_key, self.accum_steps, index)
            student = self.score_fn(params, train=True, key=key)
            return progressive.distillation_loss(self.sde, student, teacher, micro["key"],
                                                 micro["image"], steps, self._spacing), ()

        (loss, _), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                     self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        # The round's last step: its student becomes the next round's teacher.
        next_round = self._round(state.step + 1)[0] != self._round(state.step)[0]
        aux = jax.tree.map(lambda p, a: jnp.where(next_round, p, a), new_state.params, state.aux)
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": self.lr_schedule(state.step), "student_steps": steps.astype(jnp.float32)}
        return new_state.replace(aux=aux), metrics

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out loss of the EMA student against the last round's teacher."""
        steps = self.config.progressive.student_steps
        return {"eval_loss": progressive.distillation_loss(
            self.sde, self.score_fn(state.ema_params), self.score_fn(state.aux), key,
            batch["image"], steps, self._spacing)}

    def _draw(self, params, key: jax.Array, shape: tuple[int, ...], steps: int) -> jax.Array:
        """DDIM in `steps` steps on the trained grid (few_step.FewStepSampling)."""
        return progressive.ddim_sample(self.sde, self.score_fn(params), key, shape, steps,
                                       self._spacing)

    @property
    def _spacing(self) -> str:
        return self.config.progressive.time_spacing


def _as_dsm(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the diffusion family's 'dsm' objective, to check the SDE and the
    preconditioning as a diffusion model's (the loss itself is progressive.py's)."""
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.training.objective = "dsm"
    return checked
