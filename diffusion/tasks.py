"""Sampler assembly for guided and image-conditioned generation on any score model: the
task's sampler (plain sampling, inpainting, colorization, SDEdit) from a
``config.sampling``, and the jitted ``run`` that guides the model's score
(classifier-free, classifier / discriminator, autoguidance) and draws.

Pure: it knows no family and no config file beyond ``config.sampling``; bad requests raise
ValueError (or TypeError), which the caller words for its users.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import controllable, sampling
from diffusion.guidance import autoguidance, classifier_free_guidance
from diffusion.sde_lib import SDE

TASKS = ("sample", "inpaint", "colorize", "sdedit")


def plain_sampler(config: Any, sde: SDE, shape: tuple[int, ...], name: str | None,
                  steps: int | None):
    """`sampler(key, score_fn) -> (x, nfe)`: the config's sampler, or `name` (its options
    from the config) with `steps`."""
    cfg = config.sampling
    if name is None and steps is None:
        return sampling.get_sampler_from_config(config, sde, shape)
    name = name or cfg.method
    options = sampling.options_from_config(cfg, name)
    # The config's step count belongs to the config's sampler; another sampler named
    # without steps keeps its own default (18 Heun steps for edm_heun, adaptive 'ode').
    if steps is None and name == cfg.method and name != "ode":
        steps = cfg.steps
    return sampling.get_sampler(name, sde, shape, steps=steps, eps=cfg.eps,
                                denoise=cfg.noise_removal, **options)


def task_sampler(config: Any, sde: SDE, shape: tuple[int, ...], task: str, *,
                 name: str | None = None, steps: int | None = None,
                 edit_strength: float | None = None):
    """`draw(key, score_fn, image, mask) -> (x, nfe)` for the task. Image tasks run the
    config's predictor (or `name`) and corrector; `steps` defaults to the config's (SDEdit:
    that times the strength)."""
    if task not in TASKS:
        raise ValueError(f"unknown sampling task {task!r}; known: {', '.join(TASKS)}")
    if task == "sample":
        sampler = plain_sampler(config, sde, shape, name, steps)
        return lambda key, score_fn, image, mask: sampler(key, score_fn)
    cfg = config.sampling
    pc = {"predictor": cfg.predictor if name in (None, "pc") else name,
          "corrector": cfg.corrector, "snr": cfg.snr, "n_corrector_steps": cfg.n_steps_each}
    common = {"eps": cfg.eps, "denoise": cfg.noise_removal}
    if task == "sdedit":
        strength = float(edit_strength)
        steps = max(1, round(strength * cfg.steps)) if steps is None else steps
        edit = controllable.sdedit(sde, shape, strength=strength, steps=steps,
                                   sampler=pc.pop("predictor"), **pc, **common)
        return lambda key, score_fn, image, mask: edit(key, score_fn, image)
    steps = cfg.steps if steps is None else steps
    if task == "inpaint":
        return controllable.inpainter(sde, shape, steps=steps, **pc, **common)
    colorize = controllable.colorizer(sde, shape, steps=steps, **pc, **common)
    return lambda key, score_fn, image, mask: colorize(key, score_fn, image)


def sampler_name(config: Any, task: str, name: str | None) -> str:
    """What a samples file records as the sampler of `task`."""
    cfg = config.sampling
    if task == "sample":
        return name or cfg.method
    predictor = cfg.predictor if name in (None, "pc") else name
    return f"{task}: pc({predictor}, {cfg.corrector})"


def input_shapes(task: str, data_shape: tuple[int, ...]):
    """(image shape, allowed mask shapes) of the task's inputs."""
    image = (*data_shape[:-1], 1) if task == "colorize" else tuple(data_shape)
    return image, (tuple(data_shape), (*data_shape[:-1], 1))


def check_inputs(task: str, data_shape: tuple[int, ...], num: int, image, mask) -> None:
    """ValueError unless the image (and mask) fit the task and the data."""
    image_shape, mask_shapes = input_shapes(task, data_shape)
    if image is not None:
        got = tuple(np.shape(image))
        if got != image_shape and got != (num, *image_shape):
            raise ValueError(f"the image has shape {got}; expected {image_shape} "
                             f"(or ({num}, ...))")
    if mask is not None and tuple(np.shape(mask)[-3:]) not in mask_shapes:
        raise ValueError(f"the mask has shape {tuple(np.shape(mask))}; it must cover the "
                         f"image: {' or '.join(map(str, mask_shapes))}")


def guided_score(score_of: Callable, labels, guidance_scale: float, null_label: int | None):
    """Classifier-free guidance of `score_of(labels) -> score_fn` (weight 0: the
    conditional score itself)."""
    if guidance_scale == 0:
        return score_of(labels)
    return classifier_free_guidance(lambda x, t, y: score_of(y)(x, t), labels,
                                    guidance_scale, null_label)


def build(draw: Callable, num: int, data_shape: tuple[int, ...], task: str, *,
          score: Callable, to_output: Callable, draw_labels: Callable | None = None,
          guide_score: Callable | None = None, guide_scale: float = 1.0,
          classifier_guide: Callable | None = None):
    """The jitted `run(params, key, labels, classifier_params, guide_params, image, mask)
    -> (to_output(x), nfe)` of `num` samples.

    `score(params, labels) -> score_fn` is the model's (already classifier-free guided);
    `draw_labels(key, num)` draws the labels (self-conditioning clusters) instead of taking
    them; `guide_score(guide_params, labels)` autoguides with `guide_scale`;
    `classifier_guide(score_fn, classifier_params, labels)` guides by a classifier.
    """
    shape = (num, *data_shape)
    image_shape, _ = input_shapes(task, data_shape)

    @jax.jit
    def run(params, key, labels, classifier_params, guide_params, image, mask):
        if draw_labels is not None:
            key, label_key = jax.random.split(key)
            labels = draw_labels(label_key, num)
        score_fn = score(params, labels)
        if guide_score is not None:
            score_fn = autoguidance(score_fn, guide_score(guide_params, labels), guide_scale)
        if classifier_guide is not None:
            score_fn = classifier_guide(score_fn, classifier_params, labels)
        if image is not None:
            image = jnp.broadcast_to(jnp.asarray(image, jnp.float32), (num, *image_shape))
        if mask is not None:
            mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), shape)
        x, nfe = draw(key, score_fn, image, mask)
        return to_output(x), nfe

    return run


def check_guidance(w: float, *, num_classes: int, null_label: int | None) -> None:
    """ValueError unless classifier-free guidance of weight `w` applies."""
    if not np.isfinite(w) or w < 0:
        raise ValueError(f"--guidance_scale must be >= 0, got {w}")
    if w > 0 and not num_classes:
        raise ValueError("--guidance_scale (classifier-free guidance) needs a "
                         "class-conditional model; this one is unconditional "
                         "(model.num_classes=0)")
    if w > 0 and null_label is None:
        raise ValueError("--guidance_scale needs a model trained with "
                         "training.class_dropout > 0 (a null label); this one has none")


def check_classifier(classifier: Any, data_shape: tuple[int, ...], num_classes: int) -> None:
    """ValueError unless `classifier` (`data_shape`, `num_classes`, `is_discriminator`)
    can guide a model of `data_shape` and `num_classes` classes (0: unconditional)."""
    if tuple(classifier.data_shape) != tuple(data_shape):
        raise ValueError(f"the classifier takes data of shape {tuple(classifier.data_shape)}, "
                         f"the model {tuple(data_shape)}")
    if num_classes and classifier.is_discriminator:
        raise ValueError("the discriminator tells data from unconditional samples; this "
                         "model is class-conditional: guide it with a classifier")
    if num_classes and classifier.num_classes != num_classes:
        raise ValueError(f"the classifier has {classifier.num_classes} classes, the "
                         f"class-conditional model {num_classes}")


def check_guide(guide: Any, model: Any, guidance: float) -> None:
    """ValueError unless `guide` can autoguide `model`: the same kind of model on the same
    data shape and classes, without classifier-free guidance."""
    if type(guide) is not type(model):
        raise ValueError(f"the autoguide is a {type(guide).__name__}, the model a "
                         f"{type(model).__name__}: it must be the same kind of model")
    if tuple(guide.data_shape) != tuple(model.data_shape):
        raise ValueError(f"the autoguide draws data of shape {tuple(guide.data_shape)}, "
                         f"the model {tuple(model.data_shape)}")
    if guide.num_classes != model.num_classes:
        raise ValueError(f"the autoguide has model.num_classes={guide.num_classes}, the "
                         f"model {model.num_classes}: they must match")
    if guidance > 0:
        raise ValueError("autoguidance and classifier-free guidance (--guidance_scale) do "
                         "not combine here: use one of them")
