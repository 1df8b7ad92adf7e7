"""The sampler registry of score-based diffusion, on any ``score_fn(x, t)``.

One sampler is one entry of :data:`SAMPLERS`, a factory
``factory(sde, shape, *, steps, eps, denoise, **options) -> sampler`` where
``sampler(key, score_fn) -> (x, nfe)`` is a pure, jittable function (the configuration is
closed over; wrap it in ``jax.jit`` together with whatever the score function closes over).
``nfe`` is the true number of score evaluations: a Python int for fixed-step samplers, an
int32 array for adaptive ones. Samples are in the model's data space (no inverse scaling).
A sampler that cannot serve an SDE refuses it with a ValueError when it is built.

=================  ==================================  ====================================
name               options (default steps)             nfe
=================  ==================================  ====================================
euler_maruyama     - (``sde.N``)                       ``steps + denoise``
reverse_diffusion  - (``sde.N``)                       ``steps + denoise``
ancestral          - (``sde.N``); VP and VE only       ``steps + denoise``
pc                 predictor, corrector, snr,          ``steps * (1 + n_corrector_steps)
                   n_corrector_steps (``sde.N``)       + denoise`` (see :func:`pc_sampler`)
annealed_langevin  snr, n_corrector_steps             ``steps * n_corrector_steps
                   (``sde.N``); VE only                + denoise``
ode                solver, rtol, atol, max_steps       adaptive: counted; fixed:
                   (adaptive)                          ``1 + (stages - 1) steps + denoise``
euler              time_grid, rho (``sde.N``)          ``steps + denoise``
heun               time_grid, rho (50)                 ``2 steps + denoise``
edm_heun           S_churn, S_min, S_max, S_noise,     ``2 steps + denoise``
                   rho (18)
dpm_solver_pp      time_grid (20)                      ``steps + denoise``
flow_euler         - (20)                              ``steps + denoise``
flow_heun          - (10)                              ``2 steps + denoise``
=================  ==================================  ====================================

A flow-matching path (``sde.ode_only``) has no reverse SDE to sample: only the samplers in
:data:`ODE_SAMPLERS` serve it, and :func:`check_serves` refuses the others.

The families live in their own modules: reverse-SDE samplers (:data:`PREDICTORS`,
:data:`CORRECTORS`) in :mod:`diffusion.sde_samplers`, probability-flow ODE samplers in
:mod:`diffusion.ode_samplers`, EDM in :mod:`diffusion.edm` and DPM-Solver++ in
:mod:`diffusion.dpm_solver`, the shared pieces (:func:`time_grid`, :func:`tweedie_denoise`)
in :mod:`diffusion.sampler_common`; this module re-exports their public names.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np

from diffusion.dpm_solver import dpm_solver_pp_sampler
from diffusion.edm import edm_heun_sampler
from diffusion.ode_samplers import (
    ODE_SOLVERS,
    euler_sampler,
    flow_euler_sampler,
    flow_heun_sampler,
    heun_sampler,
    ode_sampler,
)
from diffusion.sampler_common import (
    Sampler,
    SamplerFactory,
    choose,
    time_grid,
    tweedie_denoise,
)
from diffusion.sde_lib import SDE
from diffusion.sde_samplers import (
    CORRECTORS,
    PREDICTORS,
    CorrectorStep,
    PredictorStep,
    ancestral_step,
    annealed_langevin_sampler,
    annealed_langevin_step,
    euler_maruyama_step,
    langevin_step,
    pc_sampler,
    predictor_sampler,
    reverse_diffusion_step,
)

__all__ = [
    "CORRECTORS",
    "ODE_SAMPLERS",
    "ODE_SOLVERS",
    "PREDICTORS",
    "SAMPLERS",
    "CorrectorStep",
    "PredictorStep",
    "Sampler",
    "SamplerFactory",
    "ancestral_step",
    "annealed_langevin_sampler",
    "annealed_langevin_step",
    "check_serves",
    "dpm_solver_pp_sampler",
    "edm_heun_sampler",
    "euler_maruyama_step",
    "euler_sampler",
    "flow_euler_sampler",
    "flow_heun_sampler",
    "get_sampler",
    "get_sampler_from_config",
    "heun_sampler",
    "langevin_step",
    "ode_sampler",
    "options_from_config",
    "pc_sampler",
    "reverse_diffusion_step",
    "sampler_options",
    "time_grid",
    "tweedie_denoise",
]

# Keyword arguments every factory takes; everything else in its signature is an option.
_COMMON = ("steps", "eps", "denoise")

SAMPLERS: dict[str, SamplerFactory] = {
    "euler_maruyama": predictor_sampler("euler_maruyama"),
    "reverse_diffusion": predictor_sampler("reverse_diffusion"),
    "ancestral": predictor_sampler("ancestral"),
    "pc": pc_sampler,
    "annealed_langevin": annealed_langevin_sampler,
    "ode": ode_sampler,
    "euler": euler_sampler,
    "heun": heun_sampler,
    "edm_heun": edm_heun_sampler,
    "dpm_solver_pp": dpm_solver_pp_sampler,
    "flow_euler": flow_euler_sampler,
    "flow_heun": flow_heun_sampler,
}

# The deterministic probability-flow samplers: the only ones an ``ode_only`` path serves.
ODE_SAMPLERS = ("flow_euler", "flow_heun", "ode", "euler", "heun")


def check_serves(name: str, sde: SDE) -> None:
    """ValueError (one line, naming the sampler) if sampler ``name`` cannot serve ``sde``:
    a flow-matching path has only its probability-flow ODE."""
    if sde.ode_only and name not in ODE_SAMPLERS:
        raise ValueError(
            f"sampler {name!r} samples a reverse SDE, and a flow-matching model "
            f"({type(sde).__name__}) has only its probability-flow ODE: use one of "
            f"{', '.join(ODE_SAMPLERS)}"
        )


def sampler_options(name: str) -> dict[str, Any]:
    """The options of sampler ``name`` with their defaults."""
    factory = choose("sampler", name, SAMPLERS)
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
      steps: number of steps; None: the sampler's default (``sde.N`` for the first-order
        samplers, 50 for 'heun', 18 for 'edm_heun', 20 for 'dpm_solver_pp'; adaptive
        steps for 'ode').
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
    check_serves(name, sde)
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


# score_sde's names for the same steps.
_PREDICTOR_ALIASES = {"ancestral_sampling": "ancestral"}
_CORRECTOR_ALIASES = {"ald": "annealed_langevin"}
# config.sampling field read for a sampler option of another name.
_OPTION_FIELDS = {"n_corrector_steps": "n_steps_each"}


def _pc_from_config(cfg: Any, sde: SDE) -> tuple[str, dict[str, Any]]:
    predictor = str(_config_get(cfg, "predictor", "euler_maruyama")).lower()
    corrector = str(_config_get(cfg, "corrector", "langevin")).lower()
    return "pc", {
        "steps": int(_config_get(cfg, "steps", sde.N)),
        "predictor": _PREDICTOR_ALIASES.get(predictor, predictor),
        "corrector": _CORRECTOR_ALIASES.get(corrector, corrector),
        "snr": float(_config_get(cfg, "snr", 0.16)),
        "n_corrector_steps": int(_config_get(cfg, "n_steps_each", 1)),
    }


def _ode_from_config(cfg: Any, sde: SDE) -> tuple[str, dict[str, Any]]:
    options = {
        name: _config_get(cfg, name, default) for name, default in sampler_options("ode").items()
    }
    # config.sampling.steps is the PC step count; the ODE stays adaptive unless asked.
    return "ode", {"steps": getattr(cfg, "ode_steps", None), **options}


def options_from_config(cfg: Any, name: str) -> dict[str, Any]:
    """The options of sampler ``name`` that ``cfg`` (a ``config.sampling``) sets, each under
    the option's own name (``n_steps_each`` for ``n_corrector_steps``), with score_sde's
    predictor and corrector names read as ours. Options the config lacks keep the
    sampler's defaults."""
    options = {}
    for option in sampler_options(name):
        value = getattr(cfg, _OPTION_FIELDS.get(option, option), None)
        if value is not None:
            options[option] = value
    for option, aliases in (("predictor", _PREDICTOR_ALIASES), ("corrector", _CORRECTOR_ALIASES)):
        if option in options:
            value = str(options[option]).lower()
            options[option] = aliases.get(value, value)
    return options


def _named_from_config(cfg: Any, name: str) -> dict[str, Any]:
    steps = getattr(cfg, "steps", None)
    return {"steps": None if steps is None else int(steps), **options_from_config(cfg, name)}


def get_sampler_from_config(config: Any, sde: SDE, shape: tuple[int, ...]) -> Sampler:
    """Build a sampler from score_sde's ``config.sampling``: ``method`` (any name in
    :data:`SAMPLERS`), ``noise_removal`` and ``eps`` (default 1e-3), and

    * 'pc': ``predictor``, ``corrector`` (score_sde's 'ancestral_sampling' and 'ald' are
      read as 'ancestral' and 'annealed_langevin'), ``snr``, ``n_steps_each`` and ``steps``
      (default ``sde.N``);
    * 'ode': the optional ``solver``/``rtol``/``atol``/``max_steps`` and ``ode_steps``
      (fixed steps; default adaptive; ``steps`` is not read);
    * any other sampler: ``steps`` (None: the sampler's default) and those of its options
      the config sets under the option's name (``n_steps_each`` for ``n_corrector_steps``).
    """
    cfg = config.sampling
    name = str(cfg.method).lower()
    choose("sampling method", name, SAMPLERS)
    if name == "pc":
        name, options = _pc_from_config(cfg, sde)
    elif name == "ode":
        name, options = _ode_from_config(cfg, sde)
    else:
        options = _named_from_config(cfg, name)
    return get_sampler(
        name,
        sde,
        shape,
        eps=float(_config_get(cfg, "eps", 1e-3)),
        denoise=bool(_config_get(cfg, "noise_removal", True)),
        **options,
    )
