"""GANs as a training family: a generator and a discriminator updated in one jitted step.

The state keeps the generator in `params`/`opt_state`/`ema_params` (what sampling reads)
and everything of the discriminator in `aux`, with the networks' non-trainable state
(spectral-norm power-iteration vectors) beside each, so the step stays a pure function of
one pytree and shards, checkpoints and resumes like any other family.

One step: the discriminator sees real and fake images (both DiffAugment-ed with the same
policy) in one batch, with R1/R2 penalties every `gan.reg_interval` steps; then the
generator is updated against the new discriminator on fresh latents; then the generator's
EMA (a half-life in images) follows.
"""

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from data import pipeline
from errors import UserError
from gan import augment, ema, losses, penalties
from networks import gan as gan_networks
from networks.spectral_norm import NetState
from training import optim
from training.families import base, clusters, common
from training.families.request import SampleRequest
from training.state import TrainState


class _Network:
    """A module split once into graph, parameters, mutable state and constants, and called
    functionally: `apply(params, state, *args, train) -> (out, new state)`."""

    def __init__(self, module: nnx.Module):
        self.graphdef, _, _, self.rest = nnx.split(module, nnx.Param, NetState, ...)

    @staticmethod
    def split(module: nnx.Module):
        _, params, state, _ = nnx.split(module, nnx.Param, NetState, ...)
        return params, state

    def apply(self, params, state, *args, train: bool, class_labels=None):
        # copy=True: fresh variables, so updating spectral-norm vectors inside a
        # gradient trace does not touch the objects of the outer jit.
        module = nnx.merge(self.graphdef, params, state, self.rest, copy=True)
        out = module(*args, train=train, class_labels=class_labels)
        return out, nnx.state(module, NetState)


class GANFamily(base.OneCallFamily):
    """`model.family='gan'`: DCGAN or ResNet (SNGAN) pairs from `networks.gan`, with the
    losses, penalties, augmentation and generator EMA of `config.gan`."""

    kind = "GAN"
    capabilities = frozenset({base.SAMPLE})

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics`: what `compute_statistics(config)` returned (the clusters of a
        self-conditioned GAN); None for a GAN that needs none."""
        self.config = config
        self.statistics = dict(statistics or {})
        cfg = config.gan
        if config.model.name not in gan_networks.GAN_NETWORKS:
            raise UserError(f"model.family='gan' takes model.name in "
                            f"{sorted(gan_networks.GAN_NETWORKS)}, got {config.model.name!r}")
        info = pipeline.get_info(config.data)
        if len(info.shape) != 3:
            raise UserError(f"a GAN needs image data; dataset {config.data.dataset!r} has "
                            f"shape {tuple(info.shape)}")
        if not config.data.centered:
            # The generators end in tanh, and D must see real and fake in one range.
            raise UserError("a GAN's generator draws images in [-1, 1]: it takes "
                            "data.centered=True, got False")
        self.data_shape = tuple(info.shape)
        self.num_classes = common.check_num_classes(config, info)
        try:
            self.d_loss_fn, self.g_loss_fn = losses.get_gan_loss(cfg.loss)
            self.policy = augment.parse_policy(cfg.augment)
        except ValueError as err:
            raise UserError(f"config.gan: {err}") from err
        for name in ("r1_gamma", "r2_gamma", "ema_halflife_images"):
            if not cfg[name] >= 0:
                raise UserError(f"config.gan.{name} must be >= 0, got {cfg[name]}")
        if int(cfg.reg_interval) < 1:
            raise UserError(f"config.gan.reg_interval must be >= 1, got {cfg.reg_interval}")
        self.clusters, self.net_config = self._self_conditioning(config)
        self.latent_dim = int(config.model.latent_dim)
        if self.latent_dim < 1:
            raise UserError(f"model.latent_dim must be >= 1, got {self.latent_dim}")
        n_iters = config.training.n_iters
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, n_iters)
        if config.training.grad_accum_steps != 1:
            raise UserError(
                f"training.grad_accum_steps={config.training.grad_accum_steps} is not available "
                "for model.family='gan': its two networks update in turn on each batch"
            )
        d_optim = config.optim.copy_and_resolve_references()
        if cfg.d_lr is not None:
            d_optim.lr = float(cfg.d_lr)
        self.d_tx, self.d_lr_schedule = optim.make_optimizer(d_optim, n_iters)
        try:
            g, d = nnx.eval_shape(lambda: gan_networks.from_config(self.net_config,
                                                                    nnx.Rngs(0)))
        except ValueError as err:
            raise UserError(f"network {config.model.name!r}: {err}") from err
        self.generator, self.discriminator = _Network(g), _Network(d)
        self._check_generator_shape()

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """The k-means clusters of the training images of a self-conditioned GAN."""
        found = clusters.compute(config, num_classes=int(config.model.num_classes))
        return {"clusters": found} if found else {}

    def _self_conditioning(self, config: ml_collections.ConfigDict):
        """(clusters or None, the networks' config): with `model.self_condition_clusters =
        K > 0` the networks embed K clusters (`clusters.py`); the model stays unconditional."""
        found = clusters.from_statistics(config, self.statistics.get("clusters"),
                                         num_classes=self.num_classes)
        if found is None:
            return None, config
        net_config = config.copy_and_resolve_references()
        net_config.model.num_classes = found.num
        return found, net_config

    # -- networks ---------------------------------------------------------------------

    def _check_generator_shape(self) -> None:
        params, state = jax.eval_shape(lambda: self._init_networks(jax.random.PRNGKey(0))[0])
        z = jax.ShapeDtypeStruct((2, self.latent_dim), jnp.float32)
        labels = jnp.zeros((2,), jnp.int32) if self._network_classes else None
        out, _ = jax.eval_shape(
            lambda p, s, z: self.generator.apply(p, s, z, train=False, class_labels=labels),
            params, state, z)
        if tuple(out.shape[1:]) != self.data_shape:
            raise UserError(f"the generator {self.config.model.name!r} outputs images of shape "
                            f"{tuple(out.shape[1:])} but the data {self.config.data.dataset!r} "
                            f"has shape {self.data_shape}")

    def _init_networks(self, key: jax.Array):
        g, d = gan_networks.from_config(self.net_config, nnx.Rngs(key))
        return _Network.split(g), _Network.split(d)

    @property
    def is_conditional(self) -> bool:
        return self.num_classes > 0

    @property
    def _network_classes(self) -> int:
        return self.clusters.num if self.clusters else self.num_classes

    @property
    def is_image_data(self) -> bool:
        return True

    def _labels(self, batch: dict):
        """What the networks are conditioned on: the labels, the clusters, or nothing."""
        if self.clusters:
            return self.clusters.of(batch["image"])
        return batch["label"].astype(jnp.int32) if self.is_conditional else None

    def _augment(self, key: jax.Array, x: jax.Array) -> jax.Array:
        return augment.diff_augment(key, x, ",".join(self.policy)) if self.policy else x

    # -- training ---------------------------------------------------------------------

    def init_state(self, key: jax.Array) -> TrainState:
        net_key, rng = jax.random.split(key)
        (g_params, g_state), (d_params, d_state) = self._init_networks(net_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=g_params,
            opt_state=self.tx.init(g_params),
            ema_params=jax.tree.map(jnp.copy, g_params),
            rng=rng,
            aux={"g_state": g_state, "d_params": d_params, "d_state": d_state,
                 "d_opt_state": self.d_tx.init(d_params)},
        )

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        cfg = self.config.gan
        key = jax.random.fold_in(state.rng, state.step)
        k_zd, k_zg, k_aug_d, k_aug_g = jax.random.split(key, 4)
        real, labels = batch["image"], self._labels(batch)
        batch_size = real.shape[0]
        aux = state.aux
        both_labels = None if labels is None else jnp.concatenate([labels, labels])

        # Discriminator: real and fake in one call (one power iteration per step).
        z = jax.random.normal(k_zd, (batch_size, self.latent_dim), real.dtype)
        fake, g_state = self.generator.apply(state.params, aux["g_state"], z, train=True,
                                             class_labels=labels)
        pair = self._augment(k_aug_d, jnp.concatenate([real, jax.lax.stop_gradient(fake)]))

        def d_objective(d_params):
            logits, d_state = self.discriminator.apply(d_params, aux["d_state"], pair,
                                                       train=True, class_labels=both_labels)
            real_logits, fake_logits = jnp.split(logits, 2)
            adversarial = self.d_loss_fn(real_logits, fake_logits)

            def d_fn(x, y):
                return self.discriminator.apply(d_params, d_state, x, train=False,
                                                class_labels=y)[0]

            reg = jnp.zeros((), logits.dtype)
            r1 = r2 = jnp.zeros((), logits.dtype)
            if cfg.r1_gamma > 0:
                r1 = penalties.lazy_penalty(
                    state.step, cfg.reg_interval,
                    lambda: penalties.r1_penalty(lambda x: d_fn(x, labels), pair[:batch_size]))
                reg = reg + 0.5 * cfg.r1_gamma * r1
            if cfg.r2_gamma > 0:
                r2 = penalties.lazy_penalty(
                    state.step, cfg.reg_interval,
                    lambda: penalties.r2_penalty(lambda x: d_fn(x, labels), pair[batch_size:]))
                reg = reg + 0.5 * cfg.r2_gamma * r2
            metrics = {"d_loss": adversarial, "real_logit": jnp.mean(real_logits),
                       "fake_logit": jnp.mean(fake_logits), "r1": r1, "r2": r2}
            return adversarial + reg, (d_state, metrics)

        (_, (d_state, d_metrics)), d_grads = jax.value_and_grad(d_objective, has_aux=True)(
            aux["d_params"])
        d_updates, d_opt_state = self.d_tx.update(d_grads, aux["d_opt_state"], aux["d_params"])
        d_params = optax.apply_updates(aux["d_params"], d_updates)

        # Generator, against the updated discriminator, on fresh latents.
        z = jax.random.normal(k_zg, (batch_size, self.latent_dim), real.dtype)
        needs_real = self.config.gan.loss == "relativistic"

        def g_objective(g_params):
            fake, g_state_new = self.generator.apply(g_params, g_state, z, train=True,
                                                     class_labels=labels)
            x = jnp.concatenate([real, fake]) if needs_real else fake
            y = both_labels if needs_real else labels
            logits, _ = self.discriminator.apply(d_params, d_state, self._augment(k_aug_g, x),
                                                 train=False, class_labels=y)
            real_logits, fake_logits = (jnp.split(logits, 2) if needs_real
                                        else (jax.lax.stop_gradient(logits), logits))
            return self.g_loss_fn(real_logits, fake_logits), g_state_new

        (g_loss, g_state), g_grads = jax.value_and_grad(g_objective, has_aux=True)(state.params)
        g_updates, g_opt_state = self.tx.update(g_grads, state.opt_state, state.params)
        g_params = optax.apply_updates(state.params, g_updates)

        beta = ema.ema_beta(batch_size, cfg.ema_halflife_images, state.step + 1, cfg.ema_rampup)
        new_state = state.replace(
            step=state.step + 1, params=g_params, opt_state=g_opt_state,
            ema_params=ema.ema_update(state.ema_params, g_params, beta),
            aux={"g_state": g_state, "d_params": d_params, "d_state": d_state,
                 "d_opt_state": d_opt_state},
        )
        metrics = {**d_metrics, "g_loss": g_loss,
                   "g_grad_norm": optax.tree.norm(g_grads),
                   "d_grad_norm": optax.tree.norm(d_grads),
                   "lr": self.lr_schedule(state.step)}
        return new_state, metrics

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """The discriminator on held-out real images against the EMA generator's fakes."""
        real, labels = batch["image"], self._labels(batch)
        z = jax.random.normal(key, (real.shape[0], self.latent_dim), real.dtype)
        fake, _ = self.generator.apply(state.ema_params, state.aux["g_state"], z, train=False,
                                       class_labels=labels)
        both = None if labels is None else jnp.concatenate([labels, labels])
        logits, _ = self.discriminator.apply(
            state.aux["d_params"], state.aux["d_state"], jnp.concatenate([real, fake]),
            train=False, class_labels=both)
        real_logits, fake_logits = jnp.split(logits, 2)
        return {"eval_d_loss": self.d_loss_fn(real_logits, fake_logits),
                "eval_real_logit": jnp.mean(real_logits),
                "eval_fake_logit": jnp.mean(fake_logits)}

    # -- sampling ---------------------------------------------------------------------

    def sample_params(self, state: TrainState, use_ema: bool = True):
        """The generator's parameters (EMA by default) and its network state."""
        return (state.ema_params if use_ema else state.params), state.aux["g_state"]

    def sampler_name(self, request: SampleRequest) -> str:
        return "generator (one call)"

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        """`sample(params, key, labels=request.labels) -> (images in [0, 1], 1)`:
        `request.batch` generator draws, compiled once; conditional generators draw
        `labels` (one int or (num,); None: 0..K-1 cycling). nfe counts generator calls."""
        self.accepts(request, classifier=classifier, guide=guide)
        num = request.batch

        @jax.jit
        def run(params, key, labels):
            g_params, g_state = params
            if self.clusters:
                key, cluster_key = jax.random.split(key)
                labels = self.clusters.draw(cluster_key, num)
            z = jax.random.normal(key, (num, self.latent_dim))
            x, _ = self.generator.apply(g_params, g_state, z, train=False, class_labels=labels)
            return common.to_unit_range(x, self.config.data.centered)

        def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
                   guide_params=None):
            labels = common.sample_labels(request.labels if labels is None else labels, num,
                                          self.num_classes)
            if any(arg is not None for arg in (classifier_params, image, mask, guide_params)):
                raise UserError("a GAN takes no classifier, autoguide, image or mask")
            return run(params, key, labels), 1

        return sample
