"""Reflow as a training family (`model.family='reflow'`, Liu et al., 2023): a flow trained
on the (noise, image) pairs a trained model's deterministic sampler coupled (`reflow.pairs`,
the .npz `reflow.py` writes), so that its paths straighten and a few Euler steps follow
them.

The student is a flow-matching model like any other (`training.sde` a path or an SDE, any
preconditioning): it samples, and has its likelihood, through the diffusion family. With
`distill.teacher_workdir` set it starts as that run's EMA weights (the same network), as
Liu et al.'s 2-rectified flow starts from the 1-rectified one (a reflow run is a teacher
too: pairs drawn from it and a student started as it make the next rectified flow);
without, from scratch. Each
step draws its batch of pairs uniformly (with replacement) from the step's key, so a
resumed run draws what the straight run would have; the data pipeline's images are not
used. The pairs are held in memory, as constants of the compiled step: a digits-scale
set, not a CIFAR-scale one.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from data import pairs_file
from diffusion import reflow
from errors import UserError
from training import accumulate
from training.families import few_step
from training.families import teacher as teachers
from training.families.diffusion import DiffusionFamily
from training.state import TrainState, apply_gradients, single_network_state

OBJECTIVE = "reflow"


class ReflowFamily(DiffusionFamily):
    """A flow trained on coupled pairs (see the module docstring). `pairs` and `teacher`
    are read by `prepare_training` (the teacher only if `distill.teacher_workdir` is set)."""

    pairs: pairs_file.Pairs | None = None
    teacher: teachers.Teacher | None = None

    def _build_objective(self, config: ml_collections.ConfigDict) -> None:
        super()._build_objective(_as_flow_matching(config))  # the path/preconditioning checks
        if config.training.objective != OBJECTIVE:
            raise UserError(f"model.family='reflow' trains training.objective={OBJECTIVE!r}, "
                            f"not {config.training.objective!r}")
        if not config.reflow.pairs:
            raise UserError("model.family='reflow' trains on pairs: set reflow.pairs to the "
                            ".npz that `python reflow.py --workdir RUN --out PAIRS.npz` writes")
        few_step.check_unconditional(config)
        self.pair_loss_fn = reflow.paired_flow_matching_loss(
            self.sde, reduce_mean=config.training.reduce_mean, eps=1e-5)

    def prepare_training(self) -> None:
        """Reads the pairs (UserError, one line, for a missing or mismatched file) and the
        teacher the student starts as, if any (one of another network is refused)."""
        self.pairs = pairs_file.load_pairs(self.config.reflow.pairs, self.data_shape,
                                           self.config.training.sde)
        if self.config.distill.teacher_workdir:
            teacher = teachers.restore(self.config, "reflow", REFLOW_TEACHERS)
            teachers.check_same_network(teacher, self.config,
                                        (*teachers.TRAINING_TIME_MODEL_KEYS, "dropout"))
            self.teacher = teacher

    def init_state(self, key: jax.Array) -> TrainState:
        """The teacher's weights (or fresh ones) as the parameters and their EMA."""
        if self.teacher is None:
            return super().init_state(key)
        return single_network_state(key, self.teacher.init_params, self.tx)

    def _pairs(self) -> tuple[jax.Array, jax.Array]:
        if self.pairs is None:
            raise UserError("a reflow run needs its pairs: call prepare_training() first "
                            "(train.py does)")
        return jnp.asarray(self.pairs.noise), jnp.asarray(self.pairs.image)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        noise, image = self._pairs()
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key, loss_key, pick_key = jax.random.split(step_key, 3)
        size = batch["image"].shape[0]  # the pipeline's batch sets the size alone
        picked = jax.random.randint(pick_key, (size,), 0, noise.shape[0])
        inputs = {"image": image[picked], "noise": noise[picked],
                  "key": jax.random.split(loss_key, size)}

        def objective(params, micro, index):
            key = few_step.micro_key(dropout_key, self.accum_steps, index)
            score_fn = self.score_fn(params, train=True, key=key)
            return self.pair_loss_fn(score_fn, micro["key"], micro["image"], micro["noise"]), ()

        (loss, _), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                     self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        return new_state, {"loss": loss, "grad_norm": optax.tree.norm(grads),
                           "lr": self.lr_schedule(state.step)}


# A reflow student starts as a diffusion or flow run, or as a reflow run (Liu et al.'s
# k-rectified flow from the (k-1)-rectified one).
REFLOW_TEACHERS = {**teachers.DIFFUSION_TEACHERS, "reflow": ReflowFamily}


def _as_flow_matching(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`config` with the 'flow_matching' objective, to check the path and preconditioning
    as a flow model's (the loss itself is diffusion/reflow.py's)."""
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.training.objective = "flow_matching"
    return checked
