"""Controllable generation on any ``score_fn(x, t)``: inpainting and colorization
(Song et al., 2021, Sec. 5 and App. I) and SDEdit (Meng et al., 2022).

Inpainting and colorization are one *linear inverse problem* sampler
(:func:`linear_inverse_solver`): in the coordinates ``u = M x`` of an orthogonal transform
``M`` (acting on the channel axis) some coordinates are known. Predictor-corrector sampling
runs on the whole ``x``; after every corrector and predictor step the known coordinates are
replaced by the known data carried forward to the current time by the SDE's marginal,
``u_known(t) = scale(t) y + std(t) z``, and the result ends with the known coordinates
set exactly. Inpainting is the identity transform with a pixel mask; colorization uses
:func:`decoupling_matrix`, whose first row is ``(1, ..., 1) / sqrt(C)``, so the known
coordinate is ``sqrt(C) * gray`` and the rest (the colour) is sampled.

The replacement scheme is score_sde's approximation of the conditional score: it is exact
as ``t -> 0`` and the Langevin corrector is what pulls the unknown part to the conditional
at small ``t``; keep the corrector on (the default) for faithful conditionals.

Every builder returns a pure, jittable function returning ``(x, nfe)`` with ``nfe`` the true
number of score evaluations (a Python int). Shapes are checked when the function is called
(shapes are static under ``jax.jit``); bad input raises a one-line ValueError.

Guidance (classifier-free, classifier, discriminator, autoguidance) wraps score functions
and lives in :mod:`diffusion.guidance`; its guided ``score_fn`` serves these samplers too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import sde_lib
from diffusion.sampler_common import integrate, time_grid, tweedie_denoise
from diffusion.sde_lib import SDE, batch_broadcast
from diffusion.sde_samplers import PREDICTORS, pc_step, resolve_pc

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
# impose(key, x, t) -> x with the known part set to the data carried to time t.
Impose = Callable[[Array, Array, Array], Array]

__all__ = [
    "colorizer",
    "decoupling_matrix",
    "inpainter",
    "linear_inverse_solver",
    "sdedit",
]


# ---------------------------------------------------------------------------------------
# Checks and the shared predictor-corrector loop
# ---------------------------------------------------------------------------------------


def _check_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    shape = tuple(int(s) for s in shape)
    if not shape or math.prod(shape) == 0:
        raise ValueError(f"shape must be a non-empty batch shape, got {shape}")
    return shape


def _check_grid(sde: SDE, steps: Any, eps: float) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer):
        raise TypeError(f"steps must be an int or None, got {steps!r}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    if not 0.0 < eps < sde.T:
        raise ValueError(f"eps must lie in (0, {sde.T}), got {eps}")
    return int(steps)


class _PC(NamedTuple):
    """A predictor step, a corrector step (None: no corrector) and the corrector's options."""

    predict: Any
    correct: Any
    snr: float
    n_corrector_steps: int

    @property
    def per_step(self) -> int:
        """Score evaluations per time step."""
        return 1 + (self.n_corrector_steps if self.correct is not None else 0)

    def step(self, sde: SDE, score_fn: ScoreFn, impose: Impose | None = None):
        """The time step for ``integrate``, with ``impose`` after every update."""
        return pc_step(sde, score_fn, self.predict, self.correct, self.snr,
                       self.n_corrector_steps, impose)


def _pc_parts(
    sde: SDE, predictor: str, corrector: str, snr: float, n_corrector_steps: int
) -> _PC:
    if PREDICTORS.get(predictor, 0) is None:
        raise ValueError("these samplers move the time at every step: predictor 'none' "
                         "cannot serve them")
    predict, correct = resolve_pc(sde, predictor, corrector, snr, n_corrector_steps)
    return _PC(predict, correct, snr, n_corrector_steps)


def _check_image(name: str, value: Array, shape: tuple[int, ...]) -> None:
    if tuple(value.shape) != shape:
        raise ValueError(f"{name} must have shape {shape}, got {tuple(value.shape)}")


# ---------------------------------------------------------------------------------------
# Linear inverse problems: inpainting and colorization
# ---------------------------------------------------------------------------------------


def decoupling_matrix(channels: int) -> np.ndarray:
    """An orthogonal ``(C, C)`` float32 matrix whose first row is ``(1, ..., 1) / sqrt(C)``
    (the rest completes it by Gram–Schmidt on the unit vectors ``e_2 .. e_C``)."""
    basis = np.eye(channels)
    basis[:, 0] = 1.0
    q, _ = np.linalg.qr(basis)
    q = q * np.sign(q[0, 0])  # QR fixes the first column up to sign
    return q.T.astype(np.float32)


def linear_inverse_solver(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    transform: np.ndarray | None = None,
    steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Callable[[Array, ScoreFn, Array, Array], tuple[Array, int]]:
    """Sample ``x`` of ``shape`` given the known coordinates of ``u = M x``.

    ``transform`` is an orthogonal ``(C, C)`` ``M`` applied on the last (channel) axis,
    ``u[..., i] = sum_k M[i, k] x[..., k]``; None is the identity. Returns
    ``solve(key, score_fn, known, mask) -> (x, nfe)`` with ``known`` of ``shape`` in ``u``
    coordinates (read only where ``mask``) and ``mask`` boolean, broadcastable to ``shape``
    (True = known). Predictor-corrector from ``T`` to ``eps`` over ``steps`` (default
    ``sde.N``) steps; after each corrector and predictor step the known coordinates become
    ``scale(t) known + std(t) z`` at the time reached. The output has the known coordinates
    set to ``known`` (bit-exact for the identity, up to float rounding otherwise).
    nfe = ``steps * (1 + n_corrector_steps) + denoise`` (no corrector term for 'none').
    """
    shape = _check_shape(shape)
    pc = _pc_parts(sde, predictor, corrector, snr, n_corrector_steps)
    steps = _check_grid(sde, sde.N if steps is None else steps, eps)
    nfe = steps * pc.per_step + int(denoise)
    if transform is not None:
        m = np.asarray(transform, np.float64)
        c = shape[-1]
        if m.shape != (c, c) or not np.allclose(m @ m.T, np.eye(c), atol=1e-5):
            raise ValueError(f"transform must be an orthogonal ({c}, {c}) matrix")
        m = jnp.asarray(m, jnp.float32)

    def to_u(x: Array) -> Array:
        return x if transform is None else x @ m.T

    def from_u(u: Array) -> Array:
        return u if transform is None else u @ m

    def solve(key: Array, score_fn: ScoreFn, known: Array, mask: Array) -> tuple[Array, int]:
        known = jnp.asarray(known)
        _check_image("known", known, shape)
        mask = jnp.asarray(mask)
        try:
            ok = np.broadcast_shapes(mask.shape, shape) == shape
        except ValueError:
            ok = False
        if not ok:
            raise ValueError(f"mask of shape {mask.shape} does not broadcast to {shape}")
        mask = jnp.broadcast_to(mask.astype(bool), shape)
        dtype = known.dtype if jnp.issubdtype(known.dtype, jnp.floating) else jnp.float32
        known = known.astype(dtype)

        def impose(key: Array, x: Array, t: Array) -> Array:
            mean, std = sde.marginal_prob(known, t)
            noisy = mean + batch_broadcast(std, x) * jax.random.normal(key, shape, dtype)
            return from_u(jnp.where(mask, noisy, to_u(x)))

        key_prior, key_start, key_loop = jax.random.split(key, 3)
        x = impose(key_start, sde.prior_sampling(key_prior, shape).astype(dtype), sde.T)
        grid = time_grid(sde, steps, eps)
        x = integrate(key_loop, x, grid, pc.step(sde, score_fn, impose))
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
        return from_u(jnp.where(mask, known, to_u(x))), nfe

    return solve


def inpainter(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Callable[[Array, ScoreFn, Array, Array], tuple[Array, int]]:
    """Inpainting (Song et al., 2021, App. I.2). Returns
    ``inpaint(key, score_fn, image, mask) -> (x, nfe)``: ``image`` of ``shape`` in the
    model's data space, ``mask`` of ``shape`` or broadcastable to it (e.g. ``(B, H, W, 1)``
    over channels), nonzero = known pixel, 0 = to fill. Known pixels of ``x`` equal
    ``image`` exactly. Options and nfe as :func:`linear_inverse_solver`.
    """
    shape = _check_shape(shape)
    options = dict(steps=steps, eps=eps, denoise=denoise, predictor=predictor)
    options.update(corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps)
    solve = linear_inverse_solver(sde, shape, **options)

    def inpaint(key: Array, score_fn: ScoreFn, image: Array, mask: Array) -> tuple[Array, int]:
        image = jnp.asarray(image)
        _check_image("image", image, shape)
        return solve(key, score_fn, image, mask)

    return inpaint


def colorizer(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    predictor: str = "reverse_diffusion",
    corrector: str = "langevin",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Callable[[Array, ScoreFn, Array], tuple[Array, int]]:
    """Colorization (Song et al., 2021, App. I.3). Returns
    ``colorize(key, score_fn, gray) -> (x, nfe)``: ``gray`` ``(B, ..., 1)`` in the model's
    data space, ``x`` of ``shape`` ``(B, ..., C)`` whose per-pixel channel mean is ``gray``
    (up to float rounding). In the coordinates of :func:`decoupling_matrix` the first
    channel ``sqrt(C) gray`` is known and the other ``C - 1`` are sampled, as inpainting.
    Options and nfe as :func:`linear_inverse_solver`.
    """
    shape = _check_shape(shape)
    channels = shape[-1]
    if len(shape) < 2:
        raise ValueError(f"colorization needs images (B, ..., C), got shape {shape}")
    if channels == 1:
        raise ValueError(
            f"colorization needs a colour (C > 1) dataset, this one has {channels} channel"
        )
    options = dict(steps=steps, eps=eps, denoise=denoise, predictor=predictor)
    options.update(corrector=corrector, snr=snr, n_corrector_steps=n_corrector_steps)
    solve = linear_inverse_solver(sde, shape, transform=decoupling_matrix(channels), **options)
    gray_shape = (*shape[:-1], 1)
    mask = np.arange(channels) == 0

    def colorize(key: Array, score_fn: ScoreFn, gray: Array) -> tuple[Array, int]:
        gray = jnp.asarray(gray)
        if tuple(gray.shape) != gray_shape:
            raise ValueError(
                f"gray must have shape {gray_shape} (one channel), got {tuple(gray.shape)}"
            )
        known = jnp.concatenate(
            [math.sqrt(channels) * gray, jnp.zeros((*shape[:-1], channels - 1), gray.dtype)],
            axis=-1,
        )
        return solve(key, score_fn, known, mask)

    return colorize


# ---------------------------------------------------------------------------------------
# SDEdit
# ---------------------------------------------------------------------------------------


def sdedit(
    sde: SDE,
    shape: tuple[int, ...],
    *,
    strength: float,
    steps: int | None = None,
    eps: float = 1e-3,
    denoise: bool = True,
    sampler: str = "reverse_diffusion",
    corrector: str = "none",
    snr: float = 0.16,
    n_corrector_steps: int = 1,
) -> Callable[[Array, ScoreFn, Array], tuple[Array, int]]:
    """SDEdit (Meng et al., 2022). Returns ``edit(key, score_fn, image) -> (x, nfe)``:
    ``image`` of ``shape`` is perturbed to ``t0 = strength * T`` by the forward marginal,
    then the reverse predictor ``sampler`` (a name in :data:`PREDICTORS`, optionally with a
    ``corrector`` from :data:`CORRECTORS`, default none) runs from ``t0`` to ``eps`` over
    ``steps`` uniform steps (default ``max(1, round(strength * sde.N))``).

    ``strength`` in (0, 1]: near 0 the result stays close to ``image``, at 1 it is an
    unconditional sample. nfe = ``steps * (1 + n_corrector_steps) + denoise``.
    """
    shape = _check_shape(shape)
    if isinstance(strength, bool) or not isinstance(strength, int | float | np.floating):
        raise TypeError(f"strength must be a float in (0, 1], got {strength!r}")
    if not 0.0 < strength <= 1.0:
        raise ValueError(f"strength must lie in (0, 1], got {strength}")
    pc = _pc_parts(sde, sampler, corrector, snr, n_corrector_steps)
    steps = _check_grid(sde, max(1, round(strength * sde.N)) if steps is None else steps, eps)
    t0 = float(strength) * sde.T
    if t0 <= eps:
        raise ValueError(f"strength {strength} puts the start time {t0} at or below eps={eps}")
    nfe = steps * pc.per_step + int(denoise)

    def edit(key: Array, score_fn: ScoreFn, image: Array) -> tuple[Array, int]:
        image = jnp.asarray(image)
        _check_image("image", image, shape)
        key_start, key_loop = jax.random.split(key)
        mean, std = sde.marginal_prob(image, t0)
        x = mean + batch_broadcast(std, image) * jax.random.normal(key_start, shape, image.dtype)
        grid = jnp.linspace(t0, eps, steps + 1)
        x = integrate(key_loop, x, grid, pc.step(sde, score_fn))
        if denoise:
            x = tweedie_denoise(sde, score_fn, x, eps)
        return x, nfe

    return edit
