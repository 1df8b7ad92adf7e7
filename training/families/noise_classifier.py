"""A noise-conditional classifier p(y | x_t, t) as a training family, for classifier
guidance (`sample.py --classifier_workdir ...`).

Trained with cross-entropy on data forward-noised by the config's SDE: t ~ U(eps, T),
x_t = mean(x, t) + std(t) z from `sde.marginal_prob`. The same loop, checkpoints and
resumption as the diffusion family; it draws no samples.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from data import pipeline
from diffusion import sde_lib
from diffusion.sde_lib import batch_broadcast
from networks import noise_classifier
from training import optim
from training.errors import UserError
from training.state import TrainState, ema_update, single_network_state

# Smallest training time: the marginal is still well conditioned in float32 (as the losses).
TRAIN_EPS = 1e-5
NETWORKS = ("noise_cnn",)


class NoiseClassifierFamily:
    """`log_prob_fn(params) -> log_prob(x, t, labels) -> (B,)` for guidance; trains with
    cross-entropy on noised data and reports loss and accuracy."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        if config.model.name not in NETWORKS:
            raise UserError(f"model.family='noise_classifier' takes model.name in {NETWORKS}, "
                            f"got {config.model.name!r}")
        if config.training.snapshot_sampling or config.eval.metrics_during_training:
            raise UserError("a noise classifier draws no samples: set "
                            "training.snapshot_sampling=False and "
                            "eval.metrics_during_training=''")
        info = pipeline.get_info(config.data)
        if len(info.shape) != 3 or info.num_classes < 2:
            raise UserError(f"a noise classifier needs labelled images; dataset "
                            f"{config.data.dataset!r} has shape {tuple(info.shape)} and "
                            f"{info.num_classes} classes")
        self.data_shape = tuple(info.shape)
        self.num_classes = int(info.num_classes)
        self.sde = sde_lib.get_sde(config)
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        try:
            model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
        except ValueError as err:
            raise UserError(f"noise classifier: {err}") from err
        self.graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)

    def _build(self, rngs: nnx.Rngs) -> nnx.Module:
        return noise_classifier.from_config(self.config, self.num_classes, rngs)

    def init_params(self, key: jax.Array):
        return nnx.split(self._build(nnx.Rngs(key)), nnx.Param, ...)[1]

    def logits_fn(self, params, *, train: bool = False, key: jax.Array | None = None):
        """`logits(x_t, t) -> (B, num_classes)` of the classifier with these parameters."""
        model = nnx.merge(self.graphdef, params, self._rest)
        net = functools.partial(model, train=train, key=key)
        return lambda x, t: net(x, 999.0 * jnp.asarray(t, jnp.float32) / self.sde.T)

    def log_prob_fn(self, params):
        """`log_prob(x_t, t, labels) -> log p(labels | x_t, t)` (B,), what
        `diffusion.controllable.classifier_guidance` differentiates."""
        logits = self.logits_fn(params)

        def log_prob(x, t, labels):
            logp = jax.nn.log_softmax(logits(x, t))
            return jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]

        return log_prob

    def _noised(self, key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        key_t, key_z = jax.random.split(key)
        t = jax.random.uniform(key_t, x.shape[:1], x.dtype, minval=TRAIN_EPS, maxval=self.sde.T)
        mean, std = self.sde.marginal_prob(x, t)
        return mean + batch_broadcast(std, x) * jax.random.normal(key_z, x.shape, x.dtype), t

    def _loss(self, logits_fn, key, batch) -> tuple[jax.Array, jax.Array]:
        x_t, t = self._noised(key, batch["image"])
        logits = logits_fn(x_t, t)
        labels = batch["label"].astype(jnp.int32)
        logp = jax.nn.log_softmax(logits)
        loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, accuracy

    def init_state(self, key: jax.Array) -> TrainState:
        return single_network_state(key, self.init_params, self.tx)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key, noise_key = jax.random.split(step_key)

        def loss_of(params):
            return self._loss(self.logits_fn(params, train=True, key=dropout_key), noise_key,
                              batch)

        (loss, accuracy), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1, params=params, opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, self.config.model.ema_rate),
        )
        return new_state, {"loss": loss, "accuracy": accuracy,
                           "grad_norm": optax.tree.norm(grads), "lr": self.lr_schedule(state.step)}

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out cross-entropy and accuracy of the EMA parameters at random times, and
        the accuracy on (nearly) clean images."""
        logits_fn = self.logits_fn(state.ema_params)
        loss, accuracy = self._loss(logits_fn, key, batch)
        x = batch["image"]
        clean = jnp.argmax(logits_fn(x, jnp.full(x.shape[:1], TRAIN_EPS)), axis=-1)
        return {"eval_loss": loss, "eval_accuracy": accuracy,
                "eval_accuracy_clean": jnp.mean(clean == batch["label"])}

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params

    def make_sampler(self, num: int, **options):
        raise UserError("model.family='noise_classifier' is a classifier and draws no samples; "
                        "use it with sample.py --classifier_workdir/--classifier_config")

    @property
    def is_image_data(self) -> bool:
        return True
