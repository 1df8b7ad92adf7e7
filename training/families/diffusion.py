"""Score-SDE diffusion as a training family: network + SDE + loss + sampler."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

import networks
from data import pipeline
from diffusion import likelihood, losses, sampling, score, sde_lib
from training import optim
from training.errors import UserError
from training.state import TrainState, ema_update


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
        self.data_shape = tuple(pipeline.get_info(config.data).shape)
        self.tx, self.lr_schedule = optim.make_optimizer(config.optim, config.training.n_iters)
        self.loss_fn = losses.get_loss_fn(
            self.sde,
            continuous=config.training.continuous,
            likelihood_weighting=config.training.likelihood_weighting,
            reduce_mean=config.training.reduce_mean,
        )
        # The graph of the network is static; only its parameters travel through jit.
        # An abstract build: the graph without initialising any parameters.
        model = nnx.eval_shape(lambda: networks.get_model(config, nnx.Rngs(0)))
        self.graphdef, _, self._rest = nnx.split(model, nnx.Param, ...)
        self._check_output_shape()

    def _check_output_shape(self) -> None:
        x = jax.ShapeDtypeStruct((2, *self.data_shape), jnp.float32)
        try:
            out = jax.eval_shape(
                lambda params, x: self._net_fn(params, train=False)(x, jnp.ones((2,))),
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
        build = lambda: nnx.split(
            networks.get_model(self.config, nnx.Rngs(key)), nnx.Param, ...
        )[1]
        return jax.eval_shape(build) if abstract else build()

    def _net_fn(self, params, *, train: bool, key: jax.Array | None = None):
        model = nnx.merge(self.graphdef, params, self._rest)
        return functools.partial(model, train=train, key=key)

    def score_fn(self, params, *, train: bool = False, key: jax.Array | None = None):
        """The score s(x, t) of the network with these parameters."""
        return score.get_score_fn(
            self.sde, self._net_fn(params, train=train, key=key),
            continuous=self.config.training.continuous,
        )

    def init_state(self, key: jax.Array) -> TrainState:
        params_key, rng = jax.random.split(key)
        params = self.init_params(params_key)
        return TrainState(
            step=jnp.zeros((), jnp.int32),
            params=params,
            opt_state=self.tx.init(params),
            ema_params=jax.tree.map(jnp.copy, params),
            rng=rng,
        )

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        step_key = jax.random.fold_in(state.rng, state.step)
        dropout_key, loss_key = jax.random.split(step_key)

        def loss_of(params):
            score_fn = self.score_fn(params, train=True, key=dropout_key)
            return self.loss_fn(score_fn, loss_key, batch["image"])

        loss, grads = jax.value_and_grad(loss_of)(state.params)
        updates, opt_state = self.tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        new_state = state.replace(
            step=state.step + 1,
            params=params,
            opt_state=opt_state,
            ema_params=ema_update(state.ema_params, params, self.config.model.ema_rate),
        )
        metrics = {
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "lr": self.lr_schedule(state.step),
        }
        return new_state, metrics

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        """Held-out loss of the EMA parameters (fixed key: a smooth curve)."""
        return {"eval_loss": self.loss_fn(self.score_fn(state.ema_params), key, batch["image"])}

    def sample_params(self, state: TrainState, use_ema: bool = True):
        return state.ema_params if use_ema else state.params

    def make_sampler(self, num: int, *, name: str | None = None, steps: int | None = None):
        """A jitted `sample(params, key) -> (x, nfe)` for `num` samples: images in [0, 1], or
        2-D points as they are.

        By default the config's sampler; `name`/`steps` override it (sample.py's
        --sampler/--steps), taking the config's options that the named sampler accepts.
        """
        shape = (num, *self.data_shape)
        cfg = self.config.sampling
        if name is None and steps is None:
            sampler = sampling.get_sampler_from_config(self.config, self.sde, shape)
        else:
            name = name or cfg.method
            accepted = sampling.sampler_options(name)
            from_config = {"predictor": cfg.predictor, "corrector": cfg.corrector,
                           "snr": cfg.snr, "n_corrector_steps": cfg.n_steps_each}
            options = {k: v for k, v in from_config.items() if k in accepted}
            if steps is None and name != "ode":  # the ODE sampler is adaptive by default
                steps = cfg.steps
            sampler = sampling.get_sampler(name, self.sde, shape, steps=steps, eps=cfg.eps,
                                           denoise=cfg.noise_removal, **options)

        @jax.jit
        def sample(params, key):
            x, nfe = sampler(key, self.score_fn(params))
            return self.to_unit_range(x), nfe

        return sample

    def make_log_likelihood(self, **options):
        """A jitted `log_likelihood(params, key, x) -> (logp (B,), nfe)` in nats, for data
        `x` in the model's data space, by the probability-flow ODE (options: those of
        `diffusion.likelihood.get_likelihood_fn`)."""
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
        if self.config.data.centered:
            x = (x + 1.0) / 2.0
        return jnp.clip(x, 0.0, 1.0)

