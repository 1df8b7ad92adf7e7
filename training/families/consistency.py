"""Consistency models as a training family (`model.family='consistency'`): the diffusion
family's network, data and SDE, trained as a consistency function f(x, sigma) by
`training.objective`:

- 'consistency_distillation' (Song et al., 2023): adjacent levels joined by one ODE step
  of a trained diffusion teacher (`distill.teacher_workdir`, read when training starts);
- 'consistency_training' (Song & Dhariwal, 2024's improved recipe with its config): the
  same noise at both levels, no teacher.

The student is compared with a target network, the EMA of its weights at
`consistency.target_ema` (0: the student itself under a stop-gradient), kept in the train
state's `aux`; samples come from the EMA at `model.ema_rate`, by multistep consistency
sampling in `sampling.steps` (sample.py --steps) network calls, at most
`consistency.intervals`, through evenly spaced levels of the grid or those
`consistency.sampling_levels` names for that many steps.

`consistency.parametrization` says how f reads the network: 'edm' wraps it in Song et al.'s
c_skip/c_out/c_in, the SDE only saying how it hears a noise level (its `c_noise` at t(sigma),
999 t on VP, as the teacher heard it); 'denoiser' reads it as a diffusion model does, through
`model.preconditioning`, and takes one Euler step to sigma_min along that denoiser. A
distillation student in 'denoiser' starts as its teacher (the same network, checked), not
from scratch.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from diffusion import consistency, edm, score
from diffusion.sde_lib import batch_broadcast
from errors import UserError
from training import accumulate
from training.families import few_step
from training.families import teacher as teachers
from training.families.diffusion import DiffusionFamily
from training.families.request import SampleRequest
from training.state import TrainState, apply_gradients, ema_update, single_network_state

DISTILLATION, TRAINING = "consistency_distillation", "consistency_training"
SAMPLER = "consistency"  # multistep consistency sampling, its one sampler


def _choice(key: str, value: str, known) -> None:
    if value not in known:
        raise UserError(f"{key}={value!r} is not one of {sorted(known)}")


class ConsistencyFamily(few_step.FewStepSampling, DiffusionFamily):
    """A consistency model (see the module docstring). `teacher` is the restored teacher
    of a distillation run once `prepare_training` has run, else None."""

    teacher: teachers.Teacher | None = None
    sampling_levels: tuple[int, ...] = ()  # consistency.sampling_levels, parsed
    SAMPLER = SAMPLER
    KIND = "consistency model"

    def _build_objective(self, config: ml_collections.ConfigDict) -> None:
        c = config.consistency
        objective = config.training.objective
        if objective not in (DISTILLATION, TRAINING):
            raise UserError(f"model.family='consistency' trains training.objective "
                            f"{DISTILLATION!r} or {TRAINING!r}, not {objective!r}")
        if objective == DISTILLATION:
            teachers.workdir_of(config, f"training.objective={DISTILLATION!r}")
        elif config.distill.teacher_workdir:
            raise UserError(f"training.objective={TRAINING!r} learns from the data alone: "
                            f"distill.teacher_workdir is for {DISTILLATION!r}")
        _choice("consistency.parametrization", c.parametrization, PARAMETRIZATIONS)
        if c.parametrization == "edm" and config.model.preconditioning != "none":
            raise UserError("consistency.parametrization='edm' has its own (c_skip, c_out "
                            "around sigma_min): leave model.preconditioning='none', or read "
                            "the network as a denoiser with consistency.parametrization="
                            "'denoiser'")
        if c.parametrization == "denoiser":
            try:
                score.check_preconditioning(config.model.preconditioning,
                                            continuous=config.training.continuous,
                                            sigma_data=config.model.sigma_data)
            except ValueError as err:
                raise UserError(f"model.preconditioning: {err}") from err
        few_step.check_unconditional(config)
        if not config.training.continuous:
            raise UserError("model.family='consistency' needs training.continuous=True")
        for key, known in (("loss", consistency.DISTANCES), ("weighting", consistency.WEIGHTINGS),
                           ("noise_levels", consistency.NOISE_LEVELS),
                           ("solver", consistency.SOLVERS)):
            _choice(f"consistency.{key}", c[key], known)
        try:
            edm.check_sigma_to_t(self.sde, "model.family='consistency'")
        except ValueError as err:
            raise UserError(str(err)) from err
        top = float(edm.edm_sigma(self.sde, jnp.asarray(self.sde.T)))
        if not 0 < c.sigma_min < c.sigma_max <= top:
            raise UserError(f"consistency.sigma_min={c.sigma_min} and sigma_max={c.sigma_max} "
                            f"must satisfy 0 < sigma_min < sigma_max <= {top:.4g}, the "
                            f"largest noise level of training.sde={config.training.sde!r}")
        if not 1 <= c.initial_intervals <= c.intervals:
            raise UserError(f"consistency.initial_intervals={c.initial_intervals} must lie in "
                            f"[1, consistency.intervals={c.intervals}]")
        if not 0.0 <= c.target_ema < 1.0:
            raise UserError(f"consistency.target_ema must lie in [0, 1), got {c.target_ema}")
        if not 1 <= config.sampling.steps <= c.intervals:
            raise UserError(f"sampling.steps={config.sampling.steps} must lie in [1, "
                            f"consistency.intervals={c.intervals}] for a consistency model")
        try:
            self.sampling_levels = consistency.parse_levels(c.sampling_levels, c.intervals)
        except ValueError as err:
            raise UserError(f"consistency.sampling_levels: {err}") from err
        if c.noise_levels == "lognormal" and not config.training.P_std > 0:
            raise UserError(f"training.P_std must be positive, got {config.training.P_std}")

    @property
    def max_steps(self) -> int:
        """The most sampling steps: the intervals of the final training grid."""
        return int(self.config.consistency.intervals)

    @property
    def starts_as_teacher(self) -> bool:
        """A distillation student read as a denoiser starts as its teacher's weights."""
        return (self.config.training.objective == DISTILLATION
                and self.config.consistency.parametrization == "denoiser")

    def prepare_training(self) -> None:
        """Restores the teacher of a distillation run (UserError, one line, for a missing
        teacher, one of another data shape or SDE, or, for a student that starts as its
        teacher, of another network)."""
        if self.config.training.objective == DISTILLATION:
            teacher = teachers.restore(self.config, f"training.objective={DISTILLATION!r}")
            if self.starts_as_teacher:
                teachers.check_same_network(teacher, self.config)
            self.teacher = teacher

    # -- the consistency function and its loss ---------------------------------------

    def _c_noise(self, sigma: jax.Array) -> jax.Array:
        return score.noise_conditioning(self.sde, edm.sigma_to_t(self.sde, sigma))

    def consistency_fn(self, params, *, train: bool = False, key: jax.Array | None = None):
        """``f(x, sigma)`` (``sigma`` ``(B,)``) of the network with these parameters, read
        by `consistency.parametrization`."""
        read = PARAMETRIZATIONS[self.config.consistency.parametrization]
        return read(self, params, train, key)

    def _edm_fn(self, params, train: bool, key: jax.Array | None):
        return consistency.consistency_fn(
            self._net_fn(params, train=train, key=key), self._c_noise,
            sigma_min=self.config.consistency.sigma_min,
            sigma_data=self.config.model.sigma_data)

    def _denoiser_fn(self, params, train: bool, key: jax.Array | None):
        denoise = edm.denoiser(self.sde, self.score_fn(params, train=train, key=key))
        return consistency.denoiser_consistency_fn(
            denoise, sigma_min=self.config.consistency.sigma_min)

    def _partner(self):
        """``x_n`` from ``x_{n+1}``: the teacher's ODE step, or the same noise at sigma_n."""
        if self.config.training.objective == TRAINING:
            return lambda x0, z, x_next, s_next, s: x0 + batch_broadcast(s, x0) * z
        if self.teacher is None:
            raise UserError("consistency distillation needs its teacher: call "
                            "prepare_training() first (train.py does)")
        denoise = edm.denoiser(self.sde, self.teacher.score_fn())
        step = consistency.SOLVERS[self.config.consistency.solver]
        return lambda x0, z, x_next, s_next, s: step(denoise, x_next, s_next, s)

    def _grid(self, step: jax.Array | int):
        """(the padded grid, its intervals) at training step `step`."""
        c = self.config.consistency
        intervals = consistency.intervals_at(step, self.config.training.n_iters,
                                             c.initial_intervals, c.intervals)
        return (consistency.karras_grid(c.sigma_min, c.sigma_max, intervals, c.rho,
                                        size=c.intervals + 1), intervals)

    def _loss(self, student, target, key, images, step):
        c, training = self.config.consistency, self.config.training
        grid, intervals = self._grid(step)
        return consistency.consistency_loss(
            student, target, key, images, grid=grid, intervals=intervals,
            partner=self._partner(), distance=c.loss, weighting=c.weighting,
            noise_levels=c.noise_levels, p_mean=training.P_mean, p_std=training.P_std)

    def init_state(self, key: jax.Array) -> TrainState:
        """The student (its teacher's EMA weights when it `starts_as_teacher`), its EMA and
        the target network (`aux`)."""
        init = self.init_params
        if self.starts_as_teacher and self.teacher is not None:
            init = self.teacher.init_params
        state = single_network_state(key, init, self.tx)
        return state.replace(aux=jax.tree.map(jnp.copy, state.params))  # the target network

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        dropout_key, inputs = few_step.step_inputs(state, batch)
        target = self.consistency_fn(state.aux)

        def objective(params, micro, index):
            key = few_step.micro_key(dropout_key, self.accum_steps, index)
            student = self.consistency_fn(params, train=True, key=key)
            return self._loss(student, target, micro["key"], micro["image"], state.step), ()

        (loss, _), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                     self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        new_state = new_state.replace(aux=ema_update(state.aux, new_state.params,
                                                     self.config.consistency.target_ema))
        metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": self.lr_schedule(state.step),
                   "intervals": self._grid(state.step)[1].astype(jnp.float32)}
        return new_state, metrics

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out consistency loss of the sampling EMA against the target network, on
        the final grid (fixed key: a smooth curve)."""
        loss = self._loss(self.consistency_fn(state.ema_params),
                          self.consistency_fn(state.aux), key, batch["image"],
                          self.config.training.n_iters)
        return {"eval_loss": loss}

    # -- sampling (few_step.FewStepSampling) -------------------------------------------

    def _check_steps(self, steps: int, flag: str, error) -> None:
        if not 1 <= steps <= self.max_steps:
            raise error(f"{flag} {steps} is above what this consistency model supports: at "
                        f"most {self.max_steps} (consistency.intervals)")

    def sampler_name(self, request: SampleRequest) -> str:
        """'consistency', with the levels when `consistency.sampling_levels` sets them."""
        levels = consistency.levels_for(self.sampling_levels, self.steps_of(request))
        return f"{SAMPLER} (levels {','.join(map(str, levels))})" if levels else SAMPLER

    def _draw(self, params, key: jax.Array, shape: tuple[int, ...], steps: int) -> jax.Array:
        """Multistep consistency sampling in `steps` calls (module docstring)."""
        c = self.config.consistency
        sigmas = consistency.sampling_sigmas(
            consistency.karras_grid(c.sigma_min, c.sigma_max, c.intervals, c.rho), steps,
            self.sampling_levels)
        return consistency.multistep_sample(self.consistency_fn(params), key, shape, sigmas,
                                            c.sigma_min)


# consistency.parametrization: how f(x, sigma) reads the network (sections.py).
PARAMETRIZATIONS = {"edm": ConsistencyFamily._edm_fn, "denoiser": ConsistencyFamily._denoiser_fn}
