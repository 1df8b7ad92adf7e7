"""Score-SDE diffusion as a training family: network + SDE + loss + sampler.

Class-conditional models (`model.num_classes > 0`) take the batch's labels; with
`training.class_dropout > 0` a label is replaced by the null label `num_classes` at that
rate during training, so that the one network is also the unconditional model that
classifier-free guidance needs (the network gets `num_classes + 1` label embeddings).

`make_sampler` assembles its sampler in `diffusion_sampling` (request checks, guidance,
the task's sampler); the family keeps the hook methods that it calls.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

import networks
from data import pipeline
from diffusion import likelihood, losses, score, sde_lib
from errors import UserError
from training import accumulate, optim
from training.families import clusters, common, diffusion_sampling
from training.state import TrainState, apply_gradients, single_network_state

TASKS = diffusion_sampling.TASKS  # the sampling tasks make_sampler takes


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Each label replaced by `null_label` with probability `rate`, independently."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


class DiffusionFamily:
    """Trains a score network with denoising score matching and samples it by SDE/ODE."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        self.sde = sde_lib.get_sde(config)
        # The network embeds what score.py feeds it: 999 t for VP/subVP, log sigma for VE.
        # Random Fourier features (scale 16) of 999 t oscillate too fast to learn from.
        if config.model.embedding_type == "fourier" and not isinstance(self.sde, sde_lib.VESDE):
            raise UserError(
                f"model.embedding_type='fourier' expects the log-sigma conditioning of a VE SDE; "
                f"use 'positional' with training.sde={config.training.sde!r}"
            )
        info = self._data_info(config)
        self.data_shape = tuple(info.shape)
        self.num_classes, self.class_dropout = self._check_labels(config, info)
        # The null label (unconditional model) exists only if training drops labels.
        self.null_label = self.num_classes if self.class_dropout > 0 else None
        self.clusters = clusters.from_config(config, num_classes=self.num_classes,
                                             training_data=self._cluster_data(config))
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.accum_steps = config.training.grad_accum_steps
        try:
            self.loss_fn = losses.get_loss_fn(
                self.sde,
                objective=config.training.objective,
                continuous=config.training.continuous,
                likelihood_weighting=config.training.likelihood_weighting,
                reduce_mean=config.training.reduce_mean,
                p_mean=config.training.P_mean,
                p_std=config.training.P_std,
                sigma_data=config.model.sigma_data,
            )
            score.check_preconditioning(config.model.preconditioning,
                                        continuous=config.training.continuous,
                                        sigma_data=config.model.sigma_data)
        except ValueError as err:
            raise UserError(f"training.objective / model.preconditioning: {err}") from err
        # The graph of the network is static; only its parameters travel through jit.
        # An abstract build: the graph without initialising any parameters.
        self._net_config = self._network_config(config)
        if self.null_label is not None or self.clusters:
            # One more label embedding for the null label; one per cluster.
            self._net_config = self._net_config.copy_and_resolve_references()
            self._net_config.model.num_classes = (self.clusters.num if self.clusters
                                                  else self.num_classes + 1)
        model = nnx.eval_shape(lambda: networks.get_model(self._net_config, nnx.Rngs(0)))
        # Building a network, even abstractly, traces every initialiser: keep the shapes.
        self.graphdef, self._abstract_params, self._rest = nnx.split(model, nnx.Param, ...)
        self._check_output_shape()

    def _data_info(self, config: ml_collections.ConfigDict):
        """What the model is trained on: `shape` and `num_classes` (the dataset's here)."""
        return pipeline.get_info(config.data)

    def _network_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The config the score network is built from."""
        return config

    def _cluster_data(self, config: ml_collections.ConfigDict) -> np.ndarray | None:
        """What self-conditioning clusters (None: the training images in data space)."""
        return None

    @staticmethod
    def _check_labels(config: ml_collections.ConfigDict, info) -> tuple[int, float]:
        num_classes = common.check_num_classes(config, info)
        dropout = float(config.training.get("class_dropout", 0.0))
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"training.class_dropout must lie in [0, 1), got {dropout}")
        if num_classes == 0 and dropout > 0:
            raise UserError("training.class_dropout > 0 needs a class-conditional model "
                            "(model.num_classes > 0)")
        return num_classes, dropout if num_classes else 0.0

    @property
    def is_conditional(self) -> bool:
        return self.num_classes > 0

    def _check_output_shape(self) -> None:
        x = jax.ShapeDtypeStruct((2, *self.data_shape), jnp.float32)
        try:
            out = jax.eval_shape(
                lambda params, x: self._net_fn(
                    params, train=False,
                    labels=0 if self.is_conditional or self.clusters else None
                )(x, jnp.ones((2,))),
                self.init_params(jax.random.PRNGKey(0), abstract=True),
                x,
            )
        except (TypeError, ValueError) as err:
            raise UserError(
                f"network {self.config.model.name!r} cannot take data of shape "
                f"{self.data_shape}: {str(err).splitlines()[0]}"
            ) from err
        if out.shape[1:] != self.data_shape:
            raise UserError(
                f"network {self.config.model.name!r} outputs shape {out.shape[1:]} but the "
                f"data {self.config.data.dataset!r} has shape {self.data_shape}"
            )

    def init_params(self, key: jax.Array, abstract: bool = False):
        """The network's initial parameters; their shapes only (no work) if `abstract`."""
        if abstract:
            return self._abstract_params
        return nnx.split(networks.get_model(self._net_config, nnx.Rngs(key)), nnx.Param, ...)[1]

    def _net_fn(self, params, *, train: bool, key: jax.Array | None = None,
                labels: jax.Array | int | None = None):
        """`net_fn(x, c_noise)`; `labels` (B,) or one label for the batch, if conditional."""
        model = nnx.merge(self.graphdef, params, self._rest)
        net = functools.partial(model, train=train, key=key)
        if labels is None:
            return net

        def net_fn(x, c_noise):
            batch_labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), x.shape[:1])
            return net(x, c_noise, class_labels=batch_labels)

        return net_fn

    def score_fn(self, params, *, train: bool = False, key: jax.Array | None = None,
                 labels: jax.Array | None = None):
        """The score s(x, t) of the network with these parameters.

        Class-conditional models take `labels` (B,); without them, the score of the null
        label, i.e. the unconditional model (a UserError if there is no null label).
        Self-conditioned models take clusters as `labels` and have no score without them.
        """
        if self.clusters:
            if labels is None:
                raise UserError(self._no_marginal_score("unconditional score"))
            return self._score_of(params, train, key, labels)
        if self.is_conditional and labels is None:
            if self.null_label is None:
                raise UserError(
                    "this class-conditional model was trained without a null label "
                    "(training.class_dropout=0), so it has no unconditional score: give labels"
                )
            labels = self.null_label
        elif labels is not None and not self.is_conditional:
            raise UserError("labels given to an unconditional model (model.num_classes=0)")
        return self._score_of(params, train, key, labels)

    def _score_of(self, params, train: bool, key: jax.Array | None, labels):
        return score.get_score_fn(
            self.sde, self._net_fn(params, train=train, key=key, labels=labels),
            continuous=self.config.training.continuous,
            preconditioning=self.config.model.preconditioning,
            sigma_data=self.config.model.sigma_data,
        )

    def init_state(self, key: jax.Array) -> TrainState:
        return single_network_state(key, self.init_params, self.tx)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key, loss_key = jax.random.split(step_key)
        images = batch["image"]
        # Labels (class dropout) and the loss's per-example keys are drawn for the whole
        # batch, so micro-batches see the draws of the full batch.
        inputs = {"image": images,
                  "key": losses.example_keys(loss_key, images.shape[0])}
        labels = self.training_labels(jax.random.fold_in(step_key, 2), batch)
        if labels is not None:
            inputs["label"] = labels

        def objective(params, micro, index):
            key = dropout_key if self.accum_steps == 1 else jax.random.fold_in(dropout_key, index)
            score_fn = self.score_fn(params, train=True, key=key, labels=micro.get("label"))
            return self.loss_fn(score_fn, micro["key"], micro["image"]), ()

        (loss, _), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                     self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.lr_schedule(state.step),
        }
        return new_state, metrics

    def _no_marginal_score(self, what: str) -> str:
        return (f"a self-conditioned model (model.self_condition_clusters="
                f"{self.clusters.num}) has no {what}: its p(x) is a mixture over the clusters, "
                "which only plain sampling draws from")

    def training_labels(self, key: jax.Array, batch: dict) -> jax.Array | None:
        """The batch's labels with class dropout applied, or the images' clusters (None
        for unconditional models)."""
        if self.clusters:
            return self.clusters.of(batch["image"])
        if not self.is_conditional:
            return None
        labels = batch["label"].astype(jnp.int32)
        if self.null_label is None:
            return labels
        return drop_labels(key, labels, self.class_dropout, self.null_label)

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out loss of the EMA parameters (fixed key: a smooth curve); conditional
        models are evaluated on the true labels (no class dropout)."""
        labels = batch["label"].astype(jnp.int32) if self.is_conditional else None
        if self.clusters:
            labels = self.clusters.of(batch["image"])
        score_fn = self.score_fn(state.ema_params, labels=labels)
        return {"eval_loss": self.loss_fn(score_fn, key, batch["image"])}

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params

    def make_sampler(
        self,
        num: int,
        *,
        name: str | None = None,
        steps: int | None = None,
        guidance_scale: float | None = None,
        classifier=None,
        classifier_scale: float = 1.0,
        task: str = "sample",
        edit_strength: float | None = None,
        guide=None,
        guide_scale: float = 1.0,
    ):
        """`sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
        guide_params=None) -> (x, nfe)` for `num` samples, compiled once: images in [0, 1],
        or 2-D points as they are. Bad requests raise UserError here or at the call, before
        any compile.

        By default the config's sampler; `name`/`steps` override it (sample.py's
        --sampler/--steps), taking the config's options that the named sampler accepts.

        Conditioning:
        - class-conditional models sample `labels` (one int for all, or (num,); None:
          0, 1, ..., K-1 cycling), with classifier-free guidance weight `guidance_scale`
          (None: `config.sampling.guidance_scale`; > 0 needs training.class_dropout > 0);
        - `classifier` (a noise_classifier family, with `classifier_params` at the call)
          adds `classifier_scale * grad log p(y | x_t, t)` for `labels` (also to an
          unconditional model), or, if it is a discriminator, `classifier_scale *
          grad log D / (1 - D)` (no labels);
        - `guide` (a weaker diffusion model of the same data and SDE, its family here and
          `guide_params` at the call): autoguidance, `(1 + guide_scale) s - guide_scale
          s_guide`, for any model; it does not combine with classifier-free guidance;
        - `task`: 'sample'; 'inpaint' (`image` (H, W, C) and `mask` (H, W, 1|C), 1 =
          known, in data space), 'colorize' (`image` the gray (H, W, 1)), 'sdedit'
          (`image` perturbed to time `edit_strength * T`, then denoised). These run the
          config's predictor (or `name`, a predictor) and corrector; `steps` defaults to
          `config.sampling.steps` (SDEdit: that times the strength).
        nfe counts score evaluations: a guided step (both halves of classifier-free
        guidance in one batched call; the model and its autoguide) counts one; classifier
        gradients are not counted.
        """
        return diffusion_sampling.make_sampler(
            self, num, name=name, steps=steps, guidance_scale=guidance_scale,
            classifier=classifier, classifier_scale=classifier_scale, task=task,
            edit_strength=edit_strength, guide=guide, guide_scale=guide_scale,
        )

    # -- sampler hooks (diffusion_sampling's functions; subclasses may extend them) ------

    def _check_guidance(self, guidance_scale: float | None) -> float:
        return diffusion_sampling.check_guidance(self, guidance_scale)

    def _check_classifier(self, classifier, scale: float) -> int:
        """The classes the classifier guides towards; UserError if it cannot guide."""
        return diffusion_sampling.check_classifier(self, classifier, scale)

    def _check_guide(self, guide, scale: float, guidance: float) -> None:
        """UserError unless `guide` can autoguide this model."""
        diffusion_sampling.check_guide(self, guide, scale, guidance)

    sample_labels = staticmethod(common.sample_labels)

    def _guided_score_fn(self, params, labels, guidance_scale: float):
        """The model's score for `labels` (none if unconditional), classifier-free guided."""
        return diffusion_sampling.guided_score_fn(self, params, labels, guidance_scale)

    def _task_sampler(self, task: str, shape, name: str | None, steps: int | None,
                      edit_strength: float | None):
        """`draw(key, score_fn, image, mask) -> (x, nfe)` for the task."""
        return diffusion_sampling.task_sampler(self, task, shape, name, steps, edit_strength)

    def _plain_sampler(self, shape, name: str | None, steps: int | None):
        return diffusion_sampling.plain_sampler(self, shape, name, steps)

    def make_log_likelihood(self, **options):
        """A jitted `log_likelihood(params, key, x) -> (logp (B,), nfe)` in nats, for data
        `x` in the model's data space, by the probability-flow ODE (options: those of
        `diffusion.likelihood.get_likelihood_fn`: divergence, eps, solver, rtol, atol,
        max_steps, num_probes). `key` draws the Hutchinson probes. Bad options fail here,
        before any compile."""
        if self.clusters:
            raise UserError(self._no_marginal_score("likelihood here"))
        likelihood_fn = likelihood.get_likelihood_fn(self.sde, **options)

        @jax.jit
        def log_likelihood(params, key, x):
            logp, _, nfe = likelihood_fn(key, self.score_fn(params), x)
            return logp, nfe

        return log_likelihood

    @property
    def is_image_data(self) -> bool:
        return len(self.data_shape) == 3

    def to_unit_range(self, x: jax.Array) -> jax.Array:
        """Images to [0, 1]; 2-D toy points are returned as they are."""
        if not self.is_image_data:
            return x
        return common.to_unit_range(x, self.config.data.centered)

