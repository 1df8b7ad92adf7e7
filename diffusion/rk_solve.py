"""diffrax glue for the adaptive probability-flow solves (the 'ode' sampler and the exact
likelihood).

Imported on first use, not with the samplers: diffrax, with equinox, lineax and optimistix,
is about a second of every process's start, and most runs (training, the fixed-step
samplers) never solve an adaptive ODE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import diffrax
import jax.numpy as jnp

from diffusion.sampler_common import ODE_SOLVERS, choose

__all__ = ["CountingPID", "counting_pid", "runge_kutta"]

_SOLVER_CLASSES = {"tsit5": "Tsit5", "dopri5": "Dopri5"}


def runge_kutta(name: str) -> diffrax.AbstractRungeKutta:
    """A fresh diffrax solver of one of :data:`ODE_SOLVERS`."""
    return getattr(diffrax, _SOLVER_CLASSES[choose("ODE solver", name, ODE_SOLVERS)])()


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


def counting_pid(rtol: float, atol: float) -> CountingPID:
    """A PID controller at ``rtol``/``atol`` whose state counts the first-stage attempts
    (``controller_state[1]`` of a solve saved with ``controller_state=True``)."""
    return CountingPID(diffrax.PIDController(rtol=rtol, atol=atol))
