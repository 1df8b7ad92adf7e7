"""The train state: one pytree of arrays, so a train step is a pure function of it."""

from typing import Any

import flax
import jax
import optax


@flax.struct.dataclass
class TrainState:
    """Everything a resumed run needs besides the data iterator.

    `params` and `ema_params` are `nnx.State`s of the model's parameters; `aux` holds any
    other trainable-module pytrees a family needs (a GAN's discriminator, for one).
    `rng` is a raw uint32 key; each step folds the step number into it, so randomness
    depends only on (seed, step), not on how the run was interrupted.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    ema_params: Any
    rng: jax.Array
    aux: Any = None


def ema_update(ema: Any, params: Any, rate: float | jax.Array) -> Any:
    """ema <- rate * ema + (1 - rate) * params, leaf by leaf."""
    return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema, params)


def apply_gradients(state: TrainState, grads: Any, tx: optax.GradientTransformation,
                    ema_rate: float) -> TrainState:
    """One optimizer update of `state.params` by `grads`, its EMA, and the step count."""
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                         ema_params=ema_update(state.ema_params, params, ema_rate))


def single_network_state(key: jax.Array, init_params, tx) -> TrainState:
    """Step 0 of a family with one network: `init_params(params_key)`, its optimizer
    state and an EMA copy; the other half of `key` seeds the run's randomness."""
    params_key, rng = jax.random.split(key)
    params = init_params(params_key)
    return TrainState(step=jax.numpy.zeros((), jax.numpy.int32), params=params,
                      opt_state=tx.init(params), ema_params=jax.tree.map(jax.numpy.copy, params),
                      rng=rng)
