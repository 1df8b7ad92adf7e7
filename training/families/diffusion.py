"""Score-SDE diffusion as a training family: network + SDE + loss + sampler.

Class-conditional models (`model.num_classes > 0`) take the batch's labels; with
`training.class_dropout > 0` a label is replaced by the null label `num_classes` at that
rate during training, so that the one network is also the unconditional model that
classifier-free guidance needs (the network gets `num_classes + 1` label embeddings).
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
from diffusion import likelihood, losses, sampling, score, sde_lib
from training import accumulate, optim
from training.errors import UserError
from training.families import clusters, common
from training.state import TrainState, apply_gradients, single_network_state

TASKS = ("sample", "inpaint", "colorize", "sdedit")


def drop_labels(key: jax.Array, labels: jax.Array, rate: float, null_label: int) -> jax.Array:
    """Each label replaced by `null_label` with probability `rate`, independently."""
    drop = jax.random.bernoulli(key, rate, labels.shape)
    return jnp.where(drop, jnp.asarray(null_label, labels.dtype), labels)


def _check_image_shape(what: str, got: tuple, expected: tuple, num: int) -> None:
    got = tuple(got)
    if got != expected and got != (num, *expected):
        raise UserError(f"the {what} has shape {got}; expected {expected} (or ({num}, ...))")


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
        from diffusion import controllable

        if task not in TASKS:
            raise UserError(f"unknown sampling task {task!r}; known: {', '.join(TASKS)}")
        if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer)
                                  or steps <= 0):
            raise UserError(f"the number of sampler steps must be a positive int, got {steps!r}")
        if task != "sample" and not self.is_image_data:
            raise UserError(f"{task} is for image data, not 2-D points")
        guidance = self._check_guidance(guidance_scale)
        if self.clusters and (task != "sample" or classifier is not None or guide is not None):
            raise UserError(self._no_marginal_score(
                f"score for {task if task != 'sample' else 'guided sampling'}"))
        label_classes = self.num_classes
        if classifier is not None:
            label_classes = self._check_classifier(classifier, classifier_scale)
        if guide is not None:
            self._check_guide(guide, guide_scale, guidance)
        shape = (num, *self.data_shape)
        draw = self._task_sampler(task, shape, name, steps, edit_strength)
        image_shape = (*self.data_shape[:-1], 1) if task == "colorize" else self.data_shape

        @jax.jit
        def run(params, key, labels, classifier_params, guide_params, image, mask):
            if self.clusters:
                key, cluster_key = jax.random.split(key)
                labels = self.clusters.draw(cluster_key, num)
            score_fn = self._guided_score_fn(params, labels, guidance)
            if guide is not None:
                score_fn = controllable.autoguidance(
                    score_fn, guide._guided_score_fn(guide_params, labels, 0.0), guide_scale)
            if classifier is not None:
                score_fn = classifier.guide(score_fn, classifier_params, labels,
                                            classifier_scale)
            if image is not None:
                image = jnp.broadcast_to(jnp.asarray(image, jnp.float32), (num, *image_shape))
            if mask is not None:
                mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), shape)
            x, nfe = draw(key, score_fn, image, mask)
            return self.to_unit_range(x), nfe

        def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
                   guide_params=None):
            labels = self.sample_labels(labels, num, label_classes)
            if (classifier is None) != (classifier_params is None):
                raise UserError("classifier_params go with a classifier given to make_sampler")
            if (guide is None) != (guide_params is None):
                raise UserError("guide_params go with a guide given to make_sampler")
            if (task == "sample") != (image is None):
                raise UserError(f"task {task!r} " + ("takes no image" if task == "sample"
                                                      else "needs an image"))
            if (task == "inpaint") == (mask is None):
                raise UserError("a mask goes with inpainting" if task != "inpaint"
                                else "inpainting needs a mask")
            if image is not None:
                _check_image_shape("image", np.shape(image), image_shape, num)
            if mask is not None:
                mask_shapes = (self.data_shape, (*self.data_shape[:-1], 1))
                if tuple(np.shape(mask)[-3:]) not in mask_shapes:
                    raise UserError(f"the mask has shape {tuple(np.shape(mask))}; it must "
                                    f"cover the image: {' or '.join(map(str, mask_shapes))}")
            return run(params, key, labels, classifier_params, guide_params, image, mask)

        return sample

    def _check_guidance(self, guidance_scale: float | None) -> float:
        cfg = self.config.sampling
        w = float(cfg.get("guidance_scale", 0.0) if guidance_scale is None else guidance_scale)
        if not np.isfinite(w) or w < 0:
            raise UserError(f"the guidance scale must be >= 0, got {w}")
        if w > 0 and not self.is_conditional:
            raise UserError(f"classifier-free guidance (scale {w}) needs a class-conditional "
                            "model; this one is unconditional (model.num_classes=0)")
        if w > 0 and self.null_label is None:
            raise UserError(f"classifier-free guidance (scale {w}) needs a model trained with "
                            "training.class_dropout > 0 (a null label); this one has none")
        return w

    def _check_classifier(self, classifier, scale: float) -> int:
        """The classes the classifier guides towards; UserError if it cannot guide."""
        if not (np.isfinite(scale) and scale >= 0):
            raise UserError(f"the classifier scale must be >= 0, got {scale}")
        if tuple(classifier.data_shape) != self.data_shape:
            raise UserError(f"the classifier takes data of shape {tuple(classifier.data_shape)}, "
                            f"the model {self.data_shape}")
        if self.is_conditional and classifier.is_discriminator:
            raise UserError("the discriminator tells data from unconditional samples; this "
                            "model is class-conditional: guide it with a classifier")
        if self.is_conditional and classifier.num_classes != self.num_classes:
            raise UserError(f"the classifier has {classifier.num_classes} classes, the "
                            f"class-conditional model {self.num_classes}")
        return int(classifier.num_classes)

    def _check_guide(self, guide, scale: float, guidance: float) -> None:
        """UserError unless `guide` can autoguide this model: the same kind of model on
        the same data shape and classes (inference.restore_guide checks data and SDE)."""
        if not (np.isfinite(scale) and scale >= 0):
            raise UserError(f"the autoguidance scale must be >= 0, got {scale}")
        if type(guide) is not type(self):
            raise UserError(f"the autoguide is a {type(guide).__name__}, the model a "
                            f"{type(self).__name__}: it must be the same kind of model")
        if tuple(guide.data_shape) != self.data_shape:
            raise UserError(f"the autoguide draws data of shape {tuple(guide.data_shape)}, "
                            f"the model {self.data_shape}")
        if guide.num_classes != self.num_classes:
            raise UserError(f"the autoguide has model.num_classes={guide.num_classes}, the "
                            f"model {self.num_classes}: they must match")
        if guidance > 0:
            raise UserError("autoguidance and classifier-free guidance (--guidance_scale) do "
                            "not combine here: use one of them")

    sample_labels = staticmethod(common.sample_labels)

    def _guided_score_fn(self, params, labels, guidance_scale: float):
        """The model's score for `labels` (none if unconditional), classifier-free guided."""
        from diffusion import controllable

        if not self.is_conditional:
            return self.score_fn(params, labels=labels if self.clusters else None)
        if guidance_scale == 0:
            return self.score_fn(params, labels=labels)
        return controllable.classifier_free_guidance(
            lambda x, t, y: self.score_fn(params, labels=y)(x, t), labels, guidance_scale,
            self.null_label,
        )

    def _task_sampler(self, task: str, shape, name: str | None, steps: int | None,
                      edit_strength: float | None):
        """`draw(key, score_fn, image, mask) -> (x, nfe)` for the task."""
        from diffusion import controllable

        cfg = self.config.sampling
        if task != "sdedit" and edit_strength is not None:
            raise UserError("an edit strength goes with SDEdit only")
        try:
            if task == "sample":
                sampler = self._plain_sampler(shape, name, steps)
                return lambda key, score_fn, image, mask: sampler(key, score_fn)
            pc = {"predictor": cfg.predictor if name in (None, "pc") else name,
                  "corrector": cfg.corrector, "snr": cfg.snr,
                  "n_corrector_steps": cfg.n_steps_each}
            common = {"eps": cfg.eps, "denoise": cfg.noise_removal}
            if task == "sdedit":
                if edit_strength is None or not 0.0 < float(edit_strength) <= 1.0:
                    raise UserError(f"the SDEdit strength must lie in (0, 1], got {edit_strength}")
                strength = float(edit_strength)
                if steps is None:
                    steps = max(1, round(strength * cfg.steps))
                edit = controllable.sdedit(
                    self.sde, shape, strength=strength, steps=steps,
                    sampler=pc.pop("predictor"), **pc, **common,
                )
                return lambda key, score_fn, image, mask: edit(key, score_fn, image)
            steps = cfg.steps if steps is None else steps
            if task == "inpaint":
                inpaint = controllable.inpainter(self.sde, shape, steps=steps, **pc, **common)
                return inpaint
            colorize = controllable.colorizer(self.sde, shape, steps=steps, **pc, **common)
            return lambda key, score_fn, image, mask: colorize(key, score_fn, image)
        except UserError:
            raise
        except (TypeError, ValueError) as err:
            what = "sampler" if task == "sample" else f"{task} sampler"
            raise UserError(f"{what}: {err}") from err

    def _plain_sampler(self, shape, name: str | None, steps: int | None):
        cfg = self.config.sampling
        if name is None and steps is None:
            return sampling.get_sampler_from_config(self.config, self.sde, shape)
        name = name or cfg.method
        options = sampling.options_from_config(cfg, name)
        # The config's step count belongs to the config's sampler; another sampler named
        # without steps keeps its own default (18 Heun steps for edm_heun, adaptive 'ode').
        if steps is None and name == cfg.method and name != "ode":
            steps = cfg.steps
        return sampling.get_sampler(name, self.sde, shape, steps=steps, eps=cfg.eps,
                                    denoise=cfg.noise_removal, **options)

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

