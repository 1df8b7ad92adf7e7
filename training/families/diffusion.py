"""Score-SDE diffusion as a training family: network + SDE + loss + sampler.

Class-conditional models (`model.num_classes > 0`) take the batch's labels; with
`training.class_dropout > 0` a label is replaced by the null label `num_classes` at that
rate during training, so that the one network is also the unconditional model that
classifier-free guidance needs (the network gets `num_classes + 1` label embeddings).

`make_sampler(request)` checks the request against the model and has `diffusion.tasks`
assemble the sampler (guidance, the task's sampler).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import networks
from data import pipeline
from diffusion import losses, score, sde_lib, tasks
from errors import UserError
from training import accumulate, optim
from training.families import base, clusters, common
from training.families.diffusion_sampling import DiffusionSampling
from training.state import TrainState, apply_gradients, single_network_state

TASKS = tasks.TASKS  # the sampling tasks make_sampler takes


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Each label replaced by `null_label` with probability `rate`, independently."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


class DiffusionFamily(DiffusionSampling, base.FamilyBase):
    """Trains a score network with denoising score matching and samples it by SDE/ODE."""

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics`: what `compute_statistics(config)` returned (the clusters of a
        self-conditioned model); None for a model that needs none."""
        self.config = config
        self.statistics = dict(statistics or {})
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
        self.clusters = clusters.from_statistics(config, self.statistics.get("clusters"),
                                                 num_classes=self.num_classes)
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.accum_steps = config.training.grad_accum_steps
        self._build_objective(config)
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
        self.capabilities = self._capabilities()

    def _build_objective(self, config: ml_collections.ConfigDict) -> None:
        """`self.loss_fn` of `training.objective`, checked with the preconditioning
        (UserError); a family with another objective overrides it."""
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

    def _data_info(self, config: ml_collections.ConfigDict):
        """What the model is trained on: `shape` and `num_classes` (the dataset's here)."""
        return pipeline.get_info(config.data)

    def _network_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The config the score network is built from."""
        return config

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """The k-means clusters of the training images of a self-conditioned model."""
        found = clusters.compute(config, num_classes=int(config.model.num_classes))
        return {"clusters": found} if found else {}

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

    def batch_labels(self, batch: dict) -> jax.Array | None:
        """What the network is conditioned on for `batch`: the images' clusters, the
        batch's labels, or None for unconditional models."""
        if self.clusters:
            return self.clusters.of(batch["image"])
        return batch["label"].astype(jnp.int32) if self.is_conditional else None

    def training_labels(self, key: jax.Array, batch: dict) -> jax.Array | None:
        """`batch_labels` with class dropout applied (not to clusters)."""
        labels = self.batch_labels(batch)
        if labels is None or self.clusters or self.class_dropout == 0:
            return labels
        return drop_labels(key, labels, self.class_dropout, self.null_label)

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out loss of the EMA parameters (fixed key: a smooth curve); conditional
        models are evaluated on the true labels (no class dropout)."""
        score_fn = self.score_fn(state.ema_params, labels=self.batch_labels(batch))
        return {"eval_loss": self.loss_fn(score_fn, key, batch["image"])}

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params
