"""A noise-conditional classifier p(y | x_t, t) as a training family, for classifier
guidance (`sample.py --classifier_workdir ...`), or, with
`classifier.objective='discriminator'`, a noise-conditional discriminator of real against
generated images for discriminator guidance (Kim et al., 2022).

Trained on data forward-noised by the config's SDE: t ~ U(eps, T),
x_t = mean(x, t) + std(t) z from `sde.marginal_prob`. The classifier learns the dataset's
labels with cross-entropy. The discriminator learns to tell the training images from a
model's samples (`classifier.fake_samples`, an .npz from sample.py), both noised the same
way, with the logistic loss; its logit estimates log p_t(x) / p_t^model(x), whose gradient
added to the model's score is the data's score when the discriminator is right. The same
loop, checkpoints and resumption as the diffusion family; it draws no samples.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from data import pipeline, samples_file
from diffusion import sde_lib
from diffusion.sde_lib import batch_broadcast
from errors import UserError
from networks import noise_classifier
from training import accumulate, optim
from training.families import base
from training.families.request import SampleRequest
from training.state import TrainState, apply_gradients, single_network_state

# Smallest training time: the marginal is still well conditioned in float32 (as the losses).
TRAIN_EPS = 1e-5
NETWORKS = ("noise_cnn",)
OBJECTIVES = ("labels", "discriminator")
# The last tenth of the generated samples is held out: the discriminator's eval accuracy
# is measured on generated images it never trained on.
HELD_OUT_FRACTION = 0.1
MIN_FAKE_SAMPLES = 20


def load_fake_samples(path: str, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) uint8 images of a model's samples .npz; UserError if the file
    is missing, malformed, of another image shape, or too small to hold some out."""
    images = samples_file.load_samples(path, shape).images
    if len(images) < MIN_FAKE_SAMPLES:
        raise UserError(f"{path} holds {len(images)} samples; a discriminator needs at least "
                        f"{MIN_FAKE_SAMPLES} (a tenth is held out)")
    held_out = max(1, int(len(images) * HELD_OUT_FRACTION))
    return images[:-held_out], images[-held_out:]


class NoiseClassifierFamily(base.FamilyBase):
    """`guide(score_fn, params, labels, scale)` adds the classifier's (or discriminator's)
    gradient to a score function; trains on noised data and reports loss and accuracy.

    `num_classes` is the number of labels it guides towards: the dataset's classes, or 0
    for a discriminator (it guides an unconditional model towards the data, no label).
    """

    capabilities = frozenset({base.GUIDE})

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics` must be empty: a noise classifier needs nothing of the data to be built."""
        if statistics:
            raise ValueError(f"a noise classifier has no statistics, got {sorted(statistics)}")
        self.config = config
        if config.model.name not in NETWORKS:
            raise UserError(f"model.family='noise_classifier' takes model.name in {NETWORKS}, "
                            f"got {config.model.name!r}")
        if config.training.snapshot_sampling or config.eval.metrics_during_training:
            raise UserError("a noise classifier draws no samples: set "
                            "training.snapshot_sampling=False and "
                            "eval.metrics_during_training=''")
        info = pipeline.get_info(config.data)
        if len(info.shape) != 3:
            raise UserError(f"a noise classifier needs images; dataset {config.data.dataset!r} "
                            f"has shape {tuple(info.shape)}")
        self.data_shape = tuple(info.shape)
        self.objective = config.classifier.objective
        fake_samples = config.classifier.fake_samples
        if self.objective not in OBJECTIVES:
            raise UserError(f"classifier.objective={self.objective!r} is not one of {OBJECTIVES}")
        if self.objective == "labels":
            if fake_samples:
                raise UserError("classifier.fake_samples is for classifier.objective="
                                "'discriminator'; this classifier learns the dataset's labels")
            if info.num_classes < 2:
                raise UserError(f"a noise classifier needs labelled images; dataset "
                                f"{config.data.dataset!r} has {info.num_classes} classes")
            self.num_classes = int(info.num_classes)
        else:
            self.num_classes = 0
        self.sde = sde_lib.get_sde(config)
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.accum_steps = config.training.grad_accum_steps
        try:
            model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
        except ValueError as err:
            raise UserError(f"noise classifier: {err}") from err
        self.graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)

    @property
    def is_discriminator(self) -> bool:
        return self.objective == "discriminator"

    @functools.cached_property
    def _fake_pools(self) -> tuple[np.ndarray, np.ndarray]:
        """(train, held-out) generated images, read when training first needs them: a
        trained discriminator guides from its checkpoint alone."""
        if not self.config.classifier.fake_samples:
            raise UserError("training a discriminator (classifier.objective='discriminator') "
                            "needs classifier.fake_samples: an .npz of the model's samples "
                            "(sample.py --out)")
        return load_fake_samples(self.config.classifier.fake_samples, self.data_shape)

    def prepare_training(self) -> None:
        """UserError now, before the loop writes anything, if the generated images of a
        discriminator are missing or malformed."""
        if self.is_discriminator:
            self._fake_pools  # noqa: B018 (read and checked)

    def _build(self, rngs: nnx.Rngs) -> nnx.Module:
        outputs = 1 if self.is_discriminator else self.num_classes
        return noise_classifier.from_config(self.config, outputs, rngs)

    def init_params(self, key: jax.Array):
        return nnx.split(self._build(nnx.Rngs(key)), nnx.Param, ...)[1]

    def logits_fn(self, params, *, train: bool = False, key: jax.Array | None = None):
        """`logits(x_t, t) -> (B, num_classes)` of the classifier with these parameters."""
        model = nnx.merge(self.graphdef, params, self._rest)
        net = functools.partial(model, train=train, key=key)
        return lambda x, t: net(x, 999.0 * jnp.asarray(t, jnp.float32) / self.sde.T)

    def log_prob_fn(self, params):
        """`log_prob(x_t, t, labels) -> log p(labels | x_t, t)` (B,), what
        `diffusion.guidance.classifier_guidance` differentiates."""
        if self.is_discriminator:
            raise UserError("a discriminator has no class probabilities; use log_ratio_fn")
        logits = self.logits_fn(params)

        def log_prob(x, t, labels):
            logp = jax.nn.log_softmax(logits(x, t))
            return jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=1)[:, 0]

        return log_prob

    def log_ratio_fn(self, params):
        """`log_ratio(x_t, t) -> log D / (1 - D)` (B,): the discriminator's logit, its
        estimate of log p_t(x) / p_t^model(x), what
        `diffusion.guidance.discriminator_guidance` differentiates."""
        if not self.is_discriminator:
            raise UserError("log_ratio_fn is a discriminator's; this classifier learns labels")
        logits = self.logits_fn(params)
        return lambda x, t: logits(x, t)[:, 0]

    def guide(self, score_fn, params, labels, scale):
        """`score_fn` guided by this network with weight `scale`: classifier guidance
        towards `labels`, or discriminator guidance (no labels)."""
        from diffusion import guidance

        if self.is_discriminator:
            return guidance.discriminator_guidance(score_fn, self.log_ratio_fn(params), scale)
        return guidance.classifier_guidance(score_fn, self.log_prob_fn(params), labels, scale)

    def _noised(self, key: jax.Array, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        key_t, key_z = jax.random.split(key)
        t = jax.random.uniform(key_t, x.shape[:1], x.dtype, minval=TRAIN_EPS, maxval=self.sde.T)
        mean, std = self.sde.marginal_prob(x, t)
        return mean + batch_broadcast(std, x) * jax.random.normal(key_z, x.shape, x.dtype), t

    def _loss(self, logits_fn, key, batch) -> tuple[jax.Array, jax.Array]:
        if self.is_discriminator:
            return self._discriminator_loss(logits_fn, key, batch)
        x_t, t = self._noised(key, batch["image"])
        logits = logits_fn(x_t, t)
        labels = batch["label"].astype(jnp.int32)
        logp = jax.nn.log_softmax(logits)
        loss = -jnp.mean(jnp.take_along_axis(logp, labels[:, None], axis=1))
        accuracy = jnp.mean(jnp.argmax(logits, axis=-1) == labels)
        return loss, accuracy

    def _to_data_space(self, images: jax.Array, key: jax.Array) -> jax.Array:
        """uint8 samples as the pipeline serves the real images (dequantized alike)."""
        data = self.config.data
        if data.uniform_dequantization:
            noise = jax.random.uniform(key, images.shape, jnp.float32)
            x = (images.astype(jnp.float32) + noise) / 256.0
        else:
            x = images.astype(jnp.float32) / 255.0
        return 2.0 * x - 1.0 if data.centered else x

    def _real_and_fake(self, key, real, fakes) -> tuple[jax.Array, jax.Array]:
        """The real batch followed by as many generated images drawn with replacement
        from `fakes`, and the mask of the real ones."""
        key_pick, key_dequant = jax.random.split(key)
        pick = jax.random.randint(key_pick, real.shape[:1], 0, len(fakes))
        fake = self._to_data_space(jnp.asarray(fakes)[pick], key_dequant)
        x = jnp.concatenate([real, fake.astype(real.dtype)])
        return x, jnp.arange(len(x)) < len(real)

    def _discriminator_loss(self, logits_fn, key, batch, fakes=None):
        """Logistic loss of real (label 1) against as many generated images (label 0),
        from `fakes` (the training pool by default), both noised by the SDE."""
        key_draw, key_noise = jax.random.split(key)
        x, is_real = self._real_and_fake(key_draw, batch["image"],
                                         self._fake_pools[0] if fakes is None else fakes)
        logits = logits_fn(*self._noised(key_noise, x))[:, 0]
        loss = jnp.mean(jnp.where(is_real, jax.nn.softplus(-logits), jax.nn.softplus(logits)))
        return loss, jnp.mean((logits > 0) == is_real)

    def init_state(self, key: jax.Array) -> TrainState:
        return single_network_state(key, self.init_params, self.tx)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key, noise_key = jax.random.split(step_key)

        def objective(params, micro, index):
            # Dropout and noise are drawn per micro-batch (folds of the step's keys).
            fold = (lambda k: k) if self.accum_steps == 1 else (
                lambda k: jax.random.fold_in(k, index))
            logits_fn = self.logits_fn(params, train=True, key=fold(dropout_key))
            return self._loss(logits_fn, fold(noise_key), micro)

        inputs = {k: batch[k] for k in ("image", "label") if k in batch}
        (loss, accuracy), grads = accumulate.value_and_grad(objective, state.params, inputs,
                                                            self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        return new_state, {"loss": loss, "accuracy": accuracy,
                           "grad_norm": optax.tree.norm(grads), "lr": self.lr_schedule(state.step)}

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out loss and accuracy of the EMA parameters at random times, and the
        accuracy on (nearly) clean images; a discriminator is scored on test images
        against the held-out samples."""
        logits_fn = self.logits_fn(state.ema_params)
        if self.is_discriminator:
            return self._discriminator_eval(logits_fn, key, batch)
        loss, accuracy = self._loss(logits_fn, key, batch)
        x = batch["image"]
        clean = jnp.argmax(logits_fn(x, jnp.full(x.shape[:1], TRAIN_EPS)), axis=-1)
        return {"eval_loss": loss, "eval_accuracy": accuracy,
                "eval_accuracy_clean": jnp.mean(clean == batch["label"])}

    def _discriminator_eval(self, logits_fn, key, batch) -> dict:
        held_out = self._fake_pools[1]
        key_loss, key_clean = jax.random.split(key)
        loss, accuracy = self._discriminator_loss(logits_fn, key_loss, batch, held_out)
        x, is_real = self._real_and_fake(key_clean, batch["image"], held_out)
        logits = logits_fn(x, jnp.full(x.shape[:1], TRAIN_EPS))[:, 0]
        return {"eval_loss": loss, "eval_accuracy": accuracy,
                "eval_accuracy_clean": jnp.mean((logits > 0) == is_real)}

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params

    def sampler_name(self, request: SampleRequest) -> str:
        return "none (a classifier)"

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        if missing[0][0] != base.SAMPLE:
            return super().refusal(missing)
        return ("model.family='noise_classifier' is a classifier and draws no samples; "
                "use it with sample.py --classifier_workdir/--classifier_config")

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        self.accepts(request, classifier=classifier, guide=guide)
        raise UserError("model.family='noise_classifier' is a classifier and draws no samples; "
                        "use it with sample.py --classifier_workdir/--classifier_config")

    @property
    def is_image_data(self) -> bool:
        return True
