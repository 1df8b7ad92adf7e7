"""Guidance: wrappers that turn score functions into a guided ``score_fn(x, t)``.

:func:`classifier_free_guidance` (Ho & Salimans, 2022), :func:`classifier_guidance`
(Dhariwal & Nichol, 2021; Song et al., 2021, Sec. 5), :func:`discriminator_guidance`
(Kim et al., 2022) and :func:`autoguidance` (Karras et al., 2024); the last two need no
labels. Each returns a plain ``score_fn(x, t)``, so every sampler (and the task samplers of
:mod:`diffusion.controllable`) serves guided models.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from diffusion import sde_lib

Array = jax.Array
ScoreFn = sde_lib.ScoreFn
CondScoreFn = Callable[[Array, Array, Array], Array]
LogProbFn = Callable[[Array, Array, Array], Array]

__all__ = [
    "autoguidance",
    "classifier_free_guidance",
    "classifier_guidance",
    "discriminator_guidance",
]


def _batch_labels(labels: Array, batch: int) -> Array:
    labels = jnp.asarray(labels)
    if labels.ndim > 1 or (labels.ndim == 1 and labels.shape[0] != batch):
        raise ValueError(f"labels must have shape () or ({batch},), got {labels.shape}")
    return jnp.broadcast_to(labels, (batch,))


def _guidance_weight(w: float | Array, name: str) -> tuple[float | Array, bool]:
    """(w, whether it is concrete): a concrete weight as a float, checked >= 0; a traced
    one as it is (it cannot be checked, and takes the general path)."""
    if isinstance(w, jax.core.Tracer):
        return w, False
    w = float(w)
    if not w >= 0.0:
        raise ValueError(f"{name} must be >= 0, got {w}")
    return w, True


def classifier_free_guidance(
    cond_score_fn: CondScoreFn, labels: Array, guidance_scale: float | Array, null_label: int
) -> ScoreFn:
    """Classifier-free guidance (Ho & Salimans, 2022) as a ``score_fn(x, t)``.

    ``cond_score_fn(x, t, labels)`` is a class-conditional score with ``null_label`` the
    unconditional class. Returns ``(1 + w) s(x, t, y) - w s(x, t, null)`` with
    ``w = guidance_scale >= 0``: ``w = 0`` is the plain conditional score (one call on the
    batch), ``w > 0`` sharpens towards the class (the ``1 + w`` convention of Ho &
    Salimans; ``w = 1`` is "guidance weight 2" in the ``s_u + g (s_c - s_u)`` convention).
    Both scores come from one call of ``cond_score_fn`` on the batch concatenated with
    itself (``2B`` examples), so a sampler step still costs one network call. ``labels``
    is ``(B,)`` or a scalar. A traced ``guidance_scale`` is not checked and always takes
    the batched path.
    """
    w, concrete = _guidance_weight(guidance_scale, "guidance_scale")

    def score_fn(x: Array, t: Array) -> Array:
        batch = x.shape[0]
        y = _batch_labels(labels, batch)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (batch,))
        if concrete and w == 0.0:
            return cond_score_fn(x, t, y)
        both = cond_score_fn(
            jnp.concatenate([x, x]),
            jnp.concatenate([t, t]),
            jnp.concatenate([y, jnp.full_like(y, null_label)]),
        )
        s_cond, s_null = both[:batch], both[batch:]
        return (1.0 + w) * s_cond - w * s_null

    return score_fn


def classifier_guidance(
    score_fn: ScoreFn, log_prob_fn: LogProbFn, labels: Array, scale: float | Array
) -> ScoreFn:
    """Classifier guidance (Song et al., 2021, Sec. 5; Dhariwal & Nichol, 2021):
    ``score_fn(x, t) + scale * grad_x log p(y | x_t, t)``.

    ``log_prob_fn(x, t, labels) -> (B,)`` is the log-probability of ``labels`` under a
    noise-conditional classifier; its gradient is ``jax.grad`` of the batch sum (examples
    are independent). ``scale = 1`` is the exact conditional score ``grad log p_t(x | y)``.
    """

    def guided(x: Array, t: Array) -> Array:
        batch = x.shape[0]
        y = _batch_labels(labels, batch)
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (batch,))
        grad = jax.grad(lambda v: jnp.sum(log_prob_fn(v, t, y)))(x)
        return score_fn(x, t) + scale * grad

    return guided


def discriminator_guidance(
    score_fn: ScoreFn, log_ratio_fn: Callable[[Array, Array], Array], scale: float | Array
) -> ScoreFn:
    """Discriminator guidance (Kim et al., 2022, "Refining generative process with
    discriminator guidance"): ``score_fn(x, t) + scale * grad_x log D / (1 - D)``.

    ``log_ratio_fn(x, t) -> (B,)`` is a noise-conditional discriminator's logit, trained to
    tell data from the model's own samples: it estimates log p_t(x) / p_t^model(x), so at
    ``scale = 1`` a correct discriminator turns the model's score into the data's. No
    labels: it serves unconditional models.
    """

    def guided(x: Array, t: Array) -> Array:
        t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (x.shape[0],))
        grad = jax.grad(lambda v: jnp.sum(log_ratio_fn(v, t)))(x)
        return score_fn(x, t) + scale * grad

    return guided


def autoguidance(score_fn: ScoreFn, guide_score_fn: ScoreFn, scale: float | Array) -> ScoreFn:
    """Autoguidance (Karras et al., 2024, "Guiding a diffusion model with a bad version of
    itself"): ``(1 + w) s(x, t) - w s_guide(x, t)`` with ``w = scale >= 0``.

    The guide is a weaker model of the same data and SDE: an earlier checkpoint of the same
    run, or a smaller network. Where the two disagree the model is unsure; the paper
    pushes away from the guide there to sharpen samples without classifier-free
    guidance's loss of variety (on the digits it traded recall for precision: README). No
    labels are needed, so it serves unconditional models. ``w = 0`` is ``score_fn`` itself
    (the paper's weight is ``1 + w``). Each guided evaluation runs both networks.
    """
    w, concrete = _guidance_weight(scale, "the autoguidance scale")

    def guided(x: Array, t: Array) -> Array:
        if concrete and w == 0.0:
            return score_fn(x, t)
        return (1.0 + w) * score_fn(x, t) - w * guide_score_fn(x, t)

    return guided
