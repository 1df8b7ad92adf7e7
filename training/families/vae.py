"""VAEs as a training family: a convolutional encoder/decoder with a spatial Gaussian
latent and a likelihood for discretised (8-bit or binarised) data.

Training maximises the ELBO with one reparameterised sample, the KL weighted by `vae.beta`
(linearly warmed up over `vae.kl_warmup_steps`) and floored per latent channel at
`vae.free_bits` nats. Evaluation reports the plain ELBO (beta 1, no free bits) and the
importance-weighted bound with `vae.iwae_samples` samples, both in bits/dim of the
discrete data, so they stand beside a diffusion model's dequantized bits/dim, and in nats
per image. Both units report the negated bound, -log P(x) or more (lower is better):
bits/dim = nats / (D ln 2) for D = H * W * C.
"""

import functools
import math

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from data import pipeline
from errors import UserError
from networks import vae as vae_networks
from training import accumulate, optim
from training.families import base, common
from training.families.request import SampleRequest
from training.state import TrainState, apply_gradients, single_network_state
from vae import elbo, likelihoods

NETWORKS = ("conv_vae",)


class _VAE(nnx.Module):
    def __init__(self, encoder: nnx.Module, decoder: nnx.Module):
        self.encoder = encoder
        self.decoder = decoder


class VAEFamily(base.OneCallFamily):
    """`model.family='vae'` (`model.name='conv_vae'`): `encode`/`decode` for latent
    diffusion, `make_bounds` for evaluation, one-call sampling from the prior."""

    kind = "VAE"
    capabilities = frozenset({base.SAMPLE, base.BOUNDS})

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics` must be empty: a VAE needs nothing of the data to be built."""
        if statistics:
            raise ValueError(f"a VAE has no statistics, got {sorted(statistics)}")
        self.config = config
        cfg = config.vae
        if config.model.name not in NETWORKS:
            raise UserError(f"model.family='vae' takes model.name in {NETWORKS}, got "
                            f"{config.model.name!r}")
        info = pipeline.get_info(config.data)
        if len(info.shape) != 3:
            raise UserError(f"a VAE needs image data; dataset {config.data.dataset!r} has "
                            f"shape {tuple(info.shape)}")
        self.data_shape = tuple(info.shape)
        self.num_classes = 0
        if config.model.num_classes:
            raise UserError("model.family='vae' is unconditional: set model.num_classes=0")
        if cfg.likelihood not in likelihoods.DECODER_LIKELIHOODS:
            raise UserError(f"config.vae.likelihood={cfg.likelihood!r} is not one of "
                            f"{sorted(likelihoods.DECODER_LIKELIHOODS)}")
        self.params_per_channel, self._log_prob = likelihoods.DECODER_LIKELIHOODS[cfg.likelihood]
        for name, low in (("beta", 0), ("kl_warmup_steps", 0), ("free_bits", 0),
                          ("iwae_samples", 1), ("num_bins", 2)):
            if not cfg[name] >= low:
                raise UserError(f"config.vae.{name} must be >= {low}, got {cfg[name]}")
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.accum_steps = config.training.grad_accum_steps
        try:
            model = nnx.eval_shape(lambda: self._build(nnx.Rngs(0)))
        except ValueError as err:
            raise UserError(f"network {config.model.name!r}: {err}") from err
        self.graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)
        params = jax.eval_shape(lambda: self.init_params(jax.random.PRNGKey(0)))
        x = jax.ShapeDtypeStruct((2, *self.data_shape), jnp.float32)
        mean, _ = jax.eval_shape(lambda p, x: self.encode_fn(p)(x), params, x)
        self.latent_shape = tuple(mean.shape[1:])
        out = jax.eval_shape(lambda p, z: self._decode_out(p, z), params, mean)
        expected = (*self.data_shape[:-1], self.data_shape[-1] * self.params_per_channel)
        if tuple(out.shape[1:]) != expected:
            raise UserError(f"the decoder outputs shape {tuple(out.shape[1:])}; the "
                            f"{cfg.likelihood} likelihood of {self.data_shape} data needs "
                            f"{expected}")

    def _build(self, rngs: nnx.Rngs) -> _VAE:
        encoder, decoder = vae_networks.from_config(self.config, self.params_per_channel, rngs)
        return _VAE(encoder, decoder)

    def init_params(self, key: jax.Array):
        return nnx.split(self._build(nnx.Rngs(key)), nnx.Param, ...)[1]

    def _model(self, params, train: bool = False):
        model = nnx.merge(self.graphdef, params, self._rest)
        return (functools.partial(model.encoder, train=train),
                functools.partial(model.decoder, train=train))

    # -- the model's pieces, as pure functions of the parameters ----------------------

    def _targets(self, x: jax.Array) -> jax.Array:
        """Data as the likelihood reads it: [-1, 1] levels, or {0, 1} when binarised."""
        x = x if self.config.data.centered else 2.0 * x - 1.0
        if self.config.vae.likelihood == "bernoulli":
            return (x > 0.0).astype(x.dtype)
        return x

    def encode_fn(self, params, train: bool = False):
        """`encode(x) -> (mean, logvar)` of q(z | x), x in the data space."""
        encoder, _ = self._model(params, train)
        return encoder

    def _decode_out(self, params, z, train: bool = False):
        return self._model(params, train)[1](z)

    def decode_log_prob_fn(self, params, train: bool = False):
        """`log_prob(z, x) -> (B,)`: log p(x | z) in nats of the discrete data."""
        _, decoder = self._model(params, train)
        bins = int(self.config.vae.num_bins)
        return lambda z, x: self._log_prob(decoder(z), self._targets(x), bins)

    def decode(self, params, z: jax.Array) -> jax.Array:
        """The decoder's mean image for latents `z`, in the data space."""
        out = self._decode_out(params, z)
        x = likelihoods.mean_image(self.config.vae.likelihood, out)  # [-1, 1] or [0, 1]
        if self.config.vae.likelihood == "bernoulli":
            x = 2.0 * x - 1.0
        return x if self.config.data.centered else (x + 1.0) / 2.0

    @property
    def num_dims(self) -> int:
        return math.prod(self.data_shape)

    # -- training ---------------------------------------------------------------------

    def init_state(self, key: jax.Array) -> TrainState:
        return single_network_state(key, self.init_params, self.tx)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        cfg = self.config.vae
        key = jax.random.fold_in(state.rng, state.step)
        weight = elbo.kl_weight(state.step, cfg.beta, cfg.kl_warmup_steps)

        def objective(params, micro, index):
            # Posterior samples are drawn per micro-batch (a fold of the step's key).
            micro_key = key if self.accum_steps == 1 else jax.random.fold_in(key, index)
            terms = elbo.elbo_terms(micro_key, self.encode_fn(params, train=True),
                                    self.decode_log_prob_fn(params, train=True), micro["image"])
            kl_used = (elbo.free_bits_kl(terms["kl_per_dim"], cfg.free_bits)
                       if cfg.free_bits > 0 else terms["kl"])
            loss = jnp.mean(weight * kl_used - terms["log_px"])
            return loss, terms

        (loss, terms), grads = accumulate.value_and_grad(
            objective, state.params, {"image": batch["image"]}, self.accum_steps)
        new_state = apply_gradients(state, grads, self.tx, self.config.model.ema_rate)
        metrics = {
            "loss": loss,
            **self._elbo_metrics(terms["elbo"]),
            "kl": jnp.mean(terms["kl"]), "recon": -jnp.mean(terms["log_px"]),
            "kl_weight": weight, "grad_norm": optax.tree.norm(grads),
            "lr": self.lr_schedule(state.step),
        }
        return new_state, metrics

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out ELBO (beta 1, no free bits) of the EMA parameters."""
        terms = elbo.elbo_terms(key, self.encode_fn(state.ema_params),
                                self.decode_log_prob_fn(state.ema_params), batch["image"])
        return {**{f"eval_{k}": v for k, v in self._elbo_metrics(terms["elbo"]).items()},
                "eval_kl": jnp.mean(terms["kl"])}

    def _elbo_metrics(self, bound: jax.Array) -> dict[str, jax.Array]:
        """The batch's mean ELBO (`bound`: (B,) log-probabilities in nats) as `elbo_bpd` and
        `elbo_nats`, both of the negated bound (an upper bound on -log P(x), lower is
        better): elbo_bpd = elbo_nats / (D ln 2)."""
        return {"elbo_bpd": jnp.mean(elbo.bits_per_dim(bound, self.num_dims)),
                "elbo_nats": -jnp.mean(bound)}

    # -- evaluation and sampling ------------------------------------------------------

    def make_bounds(self, num_samples: int | None = None):
        """A jitted `bounds(params, key, x) -> {'elbo', 'iwae'}` (B,) in nats of the
        discrete data: the ELBO and the importance-weighted bound with `num_samples`
        (default `vae.iwae_samples`) samples."""
        k = int(num_samples or self.config.vae.iwae_samples)

        @jax.jit
        def bounds(params, key, x):
            encode, log_prob = self.encode_fn(params), self.decode_log_prob_fn(params)
            key_elbo, key_iwae = jax.random.split(key)
            terms = elbo.elbo_terms(key_elbo, encode, log_prob, x)
            iwae = elbo.iwae_bound(key_iwae, encode, log_prob, x, num_samples=k)
            return {"elbo": terms["elbo"], "iwae": iwae}

        return bounds

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params

    def sampler_name(self, request: SampleRequest) -> str:
        return "decoder mean of a prior draw (one call)"

    @property
    def is_image_data(self) -> bool:
        return True

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        """`sample(params, key) -> (images in [0, 1], 1)`: `request.batch` decoder means
        of latents drawn from the prior, compiled once."""
        self.accepts(request, classifier=classifier, guide=guide)
        num = request.batch

        @jax.jit
        def run(params, key):
            z = jax.random.normal(key, (num, *self.latent_shape))
            return common.to_unit_range(self.decode(params, z), self.config.data.centered)

        def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
                   guide_params=None):
            common.sample_labels(labels, num, 0)
            if any(arg is not None for arg in (classifier_params, image, mask, guide_params)):
                raise UserError("a VAE takes no classifier, autoguide, image or mask")
            return run(params, key), 1

        return sample
