"""Samplers for score-based diffusion: reverse-SDE predictors, predictor-corrector and the
probability-flow ODE, on any ``score_fn(x, t)``.

One sampler is one entry of :data:`SAMPLERS`, a factory
``factory(sde, shape, *, steps, eps, denoise, **options) -> sampler`` where
``sampler(key, score_fn) -> (x, nfe)`` is a pure, jittable function (the configuration is
closed over; wrap it in ``jax.jit`` together with whatever the score function closes over).
``nfe`` is the true number of score evaluations: a Python int for fixed-step samplers, an
int32 array for adaptive ones. Samples are in the model's data space (no inverse scaling).

The pieces samplers share are small functions: :func:`time_grid`, the predictor steps
(:data:`PREDICTORS`), the Langevin corrector (:data:`CORRECTORS`) and the final Tweedie
denoising (:func:`tweedie_denoise`).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import diffrax
import jax
import jax.numpy as jnp
import numpy as np

from diffusion import sde_lib
from diffusion.sde_lib import SDE, batch_broadcast

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
Sampler = Callable[[Array, ScoreFn], tuple[Array, int | Array]]
SamplerFactory = Callable[..., Sampler]
# step(key, sde, score_fn, x, t, t_next) -> (x, x_mean); t, t_next are scalars, t_next < t.
PredictorStep = Callable[[Array, SDE, ScoreFn, Array, Array, Array], tuple[Array, Array]]
# step(key, sde, score_fn, x, t, snr) -> (x, x_mean): MCMC at fixed t towards p_t.
CorrectorStep = Callable[[Array, SDE, ScoreFn, Array, Array, float], tuple[Array, Array]]

__all__ = [
    "CORRECTORS",
    "ODE_SOLVERS",
    "PREDICTORS",
    "SAMPLERS",
    "CountingPID",
    "euler_maruyama_step",
    "get_sampler",
    "get_sampler_from_config",
    "langevin_step",
    "ode_sampler",
    "pc_sampler",
    "reverse_diffusion_step",
    "sampler_options",
    "time_grid",
    "tweedie_denoise",
]

# Keyword arguments every factory takes; everything else in its signature is an option.
_COMMON = ("steps", "eps", "denoise")


# ---------------------------------------------------------------------------------------
# Shared pieces
# ---------------------------------------------------------------------------------------


def time_grid(sde: SDE, steps: int, eps: float) -> Array:
    """``steps + 1`` uniformly spaced times from ``sde.T`` down to ``eps``."""
    return jnp.linspace(sde.T, eps, steps + 1)


def _batch_t(t: Array | float, x: Array) -> Array:
    return jnp.full(x.shape[:1], t, x.dtype)


def euler_maruyama_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array
) -> tuple[Array, Array]:
    """Euler–Maruyama on the reverse SDE from ``t`` to ``t_next``. One score evaluation."""
    drift, diffusion = sde.reverse(score_fn).sde(x, _batch_t(t, x))
    dt = t_next - t  # negative: time runs backwards
    x_mean = x + drift * dt
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(diffusion * jnp.sqrt(-dt), x) * noise, x_mean


def reverse_diffusion_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array
) -> tuple[Array, Array]:
    """Reverse of the SDE's own discretisation over ``[t_next, t]`` (DDPM/SMLD ancestral-style
    for VP/VE, Euler otherwise). One score evaluation.
    """
    f, g = sde.reverse(score_fn).discretize(x, _batch_t(t, x), t - t_next)
    x_mean = x - f
    noise = jax.random.normal(key, x.shape, x.dtype)
    return x_mean + batch_broadcast(g, x) * noise, x_mean


PREDICTORS: dict[str, PredictorStep] = {
    "euler_maruyama": euler_maruyama_step,
    "reverse_diffusion": reverse_diffusion_step,
}


def _per_example_norm(v: Array) -> Array:
    return jnp.sqrt(jnp.sum(jnp.square(v.reshape(v.shape[0], -1)), axis=-1))


def langevin_step(
    key: Array, sde: SDE, score_fn: ScoreFn, x: Array, t: Array, snr: float
) -> tuple[Array, Array]:
    """One Langevin MCMC step towards ``p_t`` with the step size set by a signal-to-noise
    ratio (Song et al., 2021, Alg. 4). One score evaluation.

    The norms are batch means, as in score_sde: a per-example ratio is unstable in low
    dimension, where a single near-zero score norm gives an enormous step.
    """
    t_b = _batch_t(t, x)
    grad = score_fn(x, t_b)
    noise = jax.random.normal(key, x.shape, x.dtype)
    grad_norm = jnp.mean(_per_example_norm(grad))
    noise_norm = jnp.mean(_per_example_norm(noise))
    # VP-type models shrink the step by the DDPM alpha of the current level; the tables
    # exist exactly on the VP family.
    alphas = getattr(sde, "alphas", None)
    alpha = 1.0 if alphas is None else jnp.asarray(alphas, x.dtype)[sde.discrete_index(t_b)]
    step_size = batch_broadcast(2.0 * alpha * (snr * noise_norm / grad_norm) ** 2, x)
    x_mean = x + step_size * grad
    return x_mean + jnp.sqrt(2.0 * step_size) * noise, x_mean


CORRECTORS: dict[str, CorrectorStep | None] = {"langevin": langevin_step, "none": None}


def tweedie_denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array | float) -> Array:
    """Posterior mean ``E[x_0 | x_t] = (x + std^2 score) / scale`` (Tweedie's formula).

    For VE this is ``x + sigma^2 score``; for VP it is the noise-free reverse-diffusion step
    over ``[0, t]`` with DDPM's first-order ``1/sqrt(alpha) ~ 2 - sqrt(alpha)`` made exact.
    One score evaluation.
    """
    t_b = _batch_t(t, x)
    std = sde.marginal_std(t_b)
    x0 = x + batch_broadcast(std**2, x) * score_fn(x, t_b)
    return x0 / batch_broadcast(sde.marginal_scale(t_b), x)


def _integrate(
    key: Array, x: Array, grid: Array, step: Callable[[Array, Array, Array, Array], Array]
) -> Array:
    """``x <- step(key_i, x, grid[i], grid[i+1])`` for every interval, in a compiled loop."""

    def body(i: Array, x: Array) -> Array:
        return step(jax.random.fold_in(key, i), x, grid[i], grid[i + 1])

    return jax.lax.fori_loop(0, grid.shape[0] - 1, body, x)


def _choose(kind: str, name: str, registry: dict[str, Any]) -> Any:
    if name not in registry:
        raise ValueError(f"unknown {kind} {name!r}; known: {sorted(registry)}")
    return registry[name]


# ---------------------------------------------------------------------------------------
# Samplers
# ---------------------------------------------------------------------------------------


def pc_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    predictor: str = "euler_maruyama",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Sampler:
    """Predictor-corrector sampling (Song et al., 2021): at each of ``steps`` (default
    ``sde.N``) grid times, ``n_corrector_steps`` corrector steps then one predictor step.

    Options: ``predictor`` in :data:`PREDICTORS`, ``corrector`` in :data:`CORRECTORS`,
    ``snr`` of the Langevin corrector, ``n_corrector_steps``.
    nfe = ``steps * (1 + n_corrector_steps) + denoise`` (no corrector term for 'none').
    """
    predict = _choose("predictor", predictor, PREDICTORS)
    correct = _choose("corrector", corrector, CORRECTORS)
    if correct is not None:
        if not (isinstance(n_corrector_steps, int) and n_corrector_steps >= 1):
            raise ValueError(f"n_corrector_steps must be an int >= 1, got {n_corrector_steps!r}")
        if not snr > 0:
            raise ValueError(f"snr must be positive, got {snr}")
    steps = sde.N if steps is None else steps
    per_step = 1 + (n_corrector_steps if correct is not None else 0)
    nfe = steps * per_step + int(denoise)

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int]:
        key_prior, key_loop = jax.random.split(key)
        x = sde.prior_sampling(key_prior, shape)

        def step(key: Array, x: Array, t: Array, t_next: Array) -> Array:
            key_corrector, key_predictor = jax.random.split(key)
            if correct is not None:
                x = jax.lax.fori_loop(
                    0,
                    n_corrector_steps,
                    lambda j, x: correct(
                        jax.random.fold_in(key_corrector, j), sde, score_fn, x, t, snr
                    )[0],
                    x,
                )
            return predict(key_predictor, sde, score_fn, x, t, t_next)[0]

        x = _integrate(key_loop, x, time_grid(sde, steps, eps), step)
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
        return x, nfe

    return sampler


def _predictor_sampler(predictor: str) -> SamplerFactory:
    """A registry entry running one predictor alone (PC with no corrector)."""

    def factory(
        sde: SDE, shape: tuple[int, ...], *, steps: int | None, eps: float, denoise: bool
    ) -> Sampler:
        return pc_sampler(
            sde,
            shape,
            steps=steps,
            eps=eps,
            denoise=denoise,
            predictor=predictor,
            corrector="none",
        )

    factory.__name__ = f"{predictor}_sampler"
    factory.__doc__ = (
        f"The {predictor!r} predictor alone over ``steps`` (default ``sde.N``) uniform steps "
        "from T to eps. No options. nfe = ``steps + denoise``."
    )
    return factory


ODE_SOLVERS: dict[str, type[diffrax.AbstractRungeKutta]] = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
}


class CountingPID(diffrax.AbstractAdaptiveStepSizeController):
    """A PID controller that also counts the attempts made from the initial point.

    An FSAL Runge–Kutta solver evaluates its first stage only until a step is accepted
    (afterwards it reuses the last stage), so every attempt before the first acceptance
    costs one evaluation more. Diffrax's stats count attempts but not these, hence the count.
    """

    pid: diffrax.PIDController

    @property
    def rtol(self) -> Any:
        return self.pid.rtol

    @property
    def atol(self) -> Any:
        return self.pid.atol

    @property
    def norm(self) -> Callable[[Any], Any]:
        return self.pid.norm

    def wrap(self, direction: Any) -> CountingPID:
        return CountingPID(self.pid.wrap(direction))

    def init(self, terms, t0, t1, y0, dt0, args, func, error_order):
        tnext, state = self.pid.init(terms, t0, t1, y0, dt0, args, func, error_order)
        return tnext, (state, jnp.zeros((), jnp.int32), jnp.zeros((), bool))

    def adapt_step_size(
        self, t0, t1, y0, y1_candidate, args, y_error, error_order, controller_state
    ):
        state, attempts, accepted = controller_state
        keep, tprev, tnext, made_jump, state, result = self.pid.adapt_step_size(
            t0, t1, y0, y1_candidate, args, y_error, error_order, state
        )
        attempts = attempts + jnp.where(accepted, 0, 1).astype(jnp.int32)
        return keep, tprev, tnext, made_jump, (state, attempts, accepted | keep), result


def ode_sampler(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None,
    eps: float,
    denoise: bool,
    solver: str = "tsit5",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    max_steps: int = 4096,
) -> Sampler:
    """Probability-flow ODE from ``T`` to ``eps`` with diffrax, on device.

    ``steps=None`` (default): adaptive steps under a PID controller with ``rtol``/``atol``,
    at most ``max_steps`` attempts (more is a runtime error). ``steps=n``: ``n`` fixed,
    uniform steps of the same solver (tolerances unused). Options: ``solver`` in
    :data:`ODE_SOLVERS`, ``rtol``, ``atol``, ``max_steps``.

    nfe counts every stage of accepted and rejected steps: ``s - 1`` per attempt for an
    ``s``-stage FSAL solver, plus one first-stage evaluation per attempt made before the
    first acceptance, plus ``denoise``.
    """
    solver_obj = _choose("ODE solver", solver, ODE_SOLVERS)()
    tableau = solver_obj.tableau
    if not tableau.fsal:  # the nfe bookkeeping below is for FSAL tableaus
        raise ValueError(f"ODE solver {solver!r} is not FSAL")
    evals_per_attempt = len(tableau.c)  # stages minus the reused first one
    if steps is None and not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}")
    if not (isinstance(max_steps, int) and max_steps > 0):
        raise ValueError(f"max_steps must be a positive int, got {max_steps!r}")
    adaptive = steps is None
    if adaptive:
        controller = CountingPID(diffrax.PIDController(rtol=rtol, atol=atol))
        dt0 = (eps - sde.T) / 100.0  # passed so that no probing evaluations are hidden
    else:
        controller = diffrax.StepTo(ts=np.linspace(sde.T, eps, steps + 1))
        dt0 = None

    def sampler(key: Array, score_fn: ScoreFn) -> tuple[Array, int | Array]:
        x = sde.prior_sampling(key, shape)
        reverse = sde.reverse(score_fn, probability_flow=True)
        term = diffrax.ODETerm(lambda t, y, args: reverse.sde(y, _batch_t(t, y))[0])
        solution = diffrax.diffeqsolve(
            term,
            solver_obj,
            t0=sde.T,
            t1=eps,
            dt0=dt0,
            y0=x,
            stepsize_controller=controller,
            saveat=diffrax.SaveAt(t1=True, controller_state=adaptive),
            max_steps=max_steps if adaptive else steps,
        )
        x = solution.ys[0]
        if adaptive:
            first_attempts = solution.controller_state[1]
            nfe = first_attempts + evals_per_attempt * solution.stats["num_steps"]
        else:
            nfe = 1 + evals_per_attempt * steps
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
            nfe = nfe + 1
        return x, nfe

    return sampler


SAMPLERS: dict[str, SamplerFactory] = {
    "euler_maruyama": _predictor_sampler("euler_maruyama"),
    "reverse_diffusion": _predictor_sampler("reverse_diffusion"),
    "pc": pc_sampler,
    "ode": ode_sampler,
}


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` with their defaults."""
    factory = _choose("sampler", name, SAMPLERS)
    return {
        p.name: p.default
        for p in inspect.signature(factory).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _COMMON
    }


def get_sampler(
    name: str,
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    **options: Any,
) -> Sampler:
    """Build sampler ``name`` from :data:`SAMPLERS` for batches of ``shape`` (batch first).

    Args:
      steps: number of time steps (default ``sde.N``; for 'ode', None means adaptive).
      eps: the final time; samplers integrate from ``sde.T`` down to it.
      denoise: finish with a Tweedie denoising step at ``eps`` (one extra evaluation).
      **options: sampler-specific, see :func:`sampler_options`.

    Returns ``sampler(key, score_fn) -> (x, nfe)``, pure and jittable.
    """
    known = sampler_options(name)
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise TypeError(
            f"sampler {name!r} got unknown option(s) {unknown}; its options: {sorted(known)}"
        )
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
            raise TypeError(f"steps must be an int or None, got {steps!r}")
        if steps <= 0:
            raise ValueError(f"steps must be positive, got {steps}")
        steps = int(steps)
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    shape = tuple(int(s) for s in shape)
    if not shape or math.prod(shape) == 0:
        raise ValueError(f"shape must be a non-empty batch shape, got {shape}")
    return SAMPLERS[name](sde, shape, steps=steps, eps=eps, denoise=bool(denoise), **options)


# ---------------------------------------------------------------------------------------
# score_sde-style configs
# ---------------------------------------------------------------------------------------


def _config_get(cfg: Any, name: str, default: Any) -> Any:
    value = getattr(cfg, name, None)
    return default if value is None else value


def _pc_from_config(cfg: Any, sde: SDE) -> tuple[str, dict[str, Any]]:
    return "pc", {
        "steps": int(_config_get(cfg, "steps", sde.N)),
        "predictor": str(_config_get(cfg, "predictor", "euler_maruyama")).lower(),
        "corrector": str(_config_get(cfg, "corrector", "langevin")).lower(),
        "snr": float(_config_get(cfg, "snr", 0.16)),
        "n_corrector_steps": int(_config_get(cfg, "n_steps_each", 1)),
    }


def _ode_from_config(cfg: Any, sde: SDE) -> tuple[str, dict[str, Any]]:
    options = {
        name: _config_get(cfg, name, default) for name, default in sampler_options("ode").items()
    }
    # config.sampling.steps is the PC step count; the ODE stays adaptive unless asked.
    return "ode", {"steps": getattr(cfg, "ode_steps", None), **options}


_CONFIG_METHODS: dict[str, Callable[[Any, SDE], tuple[str, dict[str, Any]]]] = {
    "pc": _pc_from_config,
    "ode": _ode_from_config,
}


def get_sampler_from_config(config: Any, sde: SDE, shape: tuple[int, ...]) -> Sampler:
    """Build a sampler from score_sde's ``config.sampling``: ``method`` ('pc' | 'ode'),
    ``predictor``, ``corrector``, ``snr``, ``n_steps_each``, ``noise_removal``, plus
    ``steps`` (default ``sde.N``; PC only) and ``eps`` (default 1e-3). For 'ode' the
    optional ``solver``/``rtol``/``atol``/``max_steps`` and ``ode_steps`` (fixed steps;
    default adaptive) are read when present.
    """
    cfg = config.sampling
    method = _choose("sampling method", str(cfg.method).lower(), _CONFIG_METHODS)
    name, options = method(cfg, sde)
    return get_sampler(
        name,
        sde,
        shape,
        eps=float(_config_get(cfg, "eps", 1e-3)),
        denoise=bool(_config_get(cfg, "noise_removal", True)),
        **options,
    )
