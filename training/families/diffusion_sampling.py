"""Sampler assembly for the diffusion family: what `DiffusionFamily.make_sampler` builds.

Functions of the family (`DiffusionFamily` or a subclass such as latent diffusion): the
request checks (sampler steps, task, classifier-free guidance, classifier guidance,
autoguidance), the task's sampler (plain sampling, inpainting, colorization, SDEdit) and
the jitted `sample(...)` that puts them together. `make_sampler` goes through the family's
hook methods (`_check_guidance`, `_check_classifier`, `_check_guide`, `_task_sampler`,
`_plain_sampler`, `_guided_score_fn`), which call the functions here, so a subclass that
overrides a hook keeps its say.
"""

import jax
import jax.numpy as jnp
import numpy as np

from diffusion import sampling
from diffusion.guidance import autoguidance, classifier_free_guidance
from errors import UserError

TASKS = ("sample", "inpaint", "colorize", "sdedit")


def check_image_shape(what: str, got: tuple, expected: tuple, num: int) -> None:
    got = tuple(got)
    if got != expected and got != (num, *expected):
        raise UserError(f"the {what} has shape {got}; expected {expected} (or ({num}, ...))")


def make_sampler(
    family,
    num: int,
    *,
    name: str | None,
    steps: int | None,
    guidance_scale: float | None,
    classifier,
    classifier_scale: float,
    task: str,
    edit_strength: float | None,
    guide,
    guide_scale: float,
):
    """`DiffusionFamily.make_sampler` for `family` (its docstring says what this does)."""
    if task not in TASKS:
        raise UserError(f"unknown sampling task {task!r}; known: {', '.join(TASKS)}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int | np.integer)
                              or steps <= 0):
        raise UserError(f"the number of sampler steps must be a positive int, got {steps!r}")
    if task != "sample" and not family.is_image_data:
        raise UserError(f"{task} is for image data, not 2-D points")
    guidance = family._check_guidance(guidance_scale)
    if family.clusters and (task != "sample" or classifier is not None or guide is not None):
        raise UserError(family._no_marginal_score(
            f"score for {task if task != 'sample' else 'guided sampling'}"))
    label_classes = family.num_classes
    if classifier is not None:
        label_classes = family._check_classifier(classifier, classifier_scale)
    if guide is not None:
        family._check_guide(guide, guide_scale, guidance)
    shape = (num, *family.data_shape)
    draw = family._task_sampler(task, shape, name, steps, edit_strength)
    image_shape = (*family.data_shape[:-1], 1) if task == "colorize" else family.data_shape

    @jax.jit
    def run(params, key, labels, classifier_params, guide_params, image, mask):
        if family.clusters:
            key, cluster_key = jax.random.split(key)
            labels = family.clusters.draw(cluster_key, num)
        score_fn = family._guided_score_fn(params, labels, guidance)
        if guide is not None:
            score_fn = autoguidance(
                score_fn, guide._guided_score_fn(guide_params, labels, 0.0), guide_scale)
        if classifier is not None:
            score_fn = classifier.guide(score_fn, classifier_params, labels,
                                        classifier_scale)
        if image is not None:
            image = jnp.broadcast_to(jnp.asarray(image, jnp.float32), (num, *image_shape))
        if mask is not None:
            mask = jnp.broadcast_to(jnp.asarray(mask, jnp.float32), shape)
        x, nfe = draw(key, score_fn, image, mask)
        return family.to_unit_range(x), nfe

    def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
               guide_params=None):
        labels = family.sample_labels(labels, num, label_classes)
        if (classifier is None) != (classifier_params is None):
            raise UserError("classifier_params go with a classifier given to make_sampler")
        if (guide is None) != (guide_params is None):
            raise UserError("guide_params go with a guide given to make_sampler")
        if (task == "sample") != (image is None):
            raise UserError(f"task {task!r} " + ("takes no image" if task == "sample"
                                                  else "needs an image"))
        if (task == "inpaint") == (mask is None):
            raise UserError("a mask goes with inpainting" if task != "inpaint"
                            else "inpainting needs a mask")
        if image is not None:
            check_image_shape("image", np.shape(image), image_shape, num)
        if mask is not None:
            mask_shapes = (family.data_shape, (*family.data_shape[:-1], 1))
            if tuple(np.shape(mask)[-3:]) not in mask_shapes:
                raise UserError(f"the mask has shape {tuple(np.shape(mask))}; it must "
                                f"cover the image: {' or '.join(map(str, mask_shapes))}")
        return run(params, key, labels, classifier_params, guide_params, image, mask)

    return sample


def check_guidance(family, guidance_scale: float | None) -> float:
    cfg = family.config.sampling
    w = float(cfg.get("guidance_scale", 0.0) if guidance_scale is None else guidance_scale)
    if not np.isfinite(w) or w < 0:
        raise UserError(f"the guidance scale must be >= 0, got {w}")
    if w > 0 and not family.is_conditional:
        raise UserError(f"classifier-free guidance (scale {w}) needs a class-conditional "
                        "model; this one is unconditional (model.num_classes=0)")
    if w > 0 and family.null_label is None:
        raise UserError(f"classifier-free guidance (scale {w}) needs a model trained with "
                        "training.class_dropout > 0 (a null label); this one has none")
    return w


def check_classifier(family, classifier, scale: float) -> int:
    """The classes the classifier guides towards; UserError if it cannot guide."""
    if not (np.isfinite(scale) and scale >= 0):
        raise UserError(f"the classifier scale must be >= 0, got {scale}")
    if tuple(classifier.data_shape) != family.data_shape:
        raise UserError(f"the classifier takes data of shape {tuple(classifier.data_shape)}, "
                        f"the model {family.data_shape}")
    if family.is_conditional and classifier.is_discriminator:
        raise UserError("the discriminator tells data from unconditional samples; this "
                        "model is class-conditional: guide it with a classifier")
    if family.is_conditional and classifier.num_classes != family.num_classes:
        raise UserError(f"the classifier has {classifier.num_classes} classes, the "
                        f"class-conditional model {family.num_classes}")
    return int(classifier.num_classes)


def check_guide(family, guide, scale: float, guidance: float) -> None:
    """UserError unless `guide` can autoguide this model: the same kind of model on
    the same data shape and classes (inference.restore_guide checks data and SDE)."""
    if not (np.isfinite(scale) and scale >= 0):
        raise UserError(f"the autoguidance scale must be >= 0, got {scale}")
    if type(guide) is not type(family):
        raise UserError(f"the autoguide is a {type(guide).__name__}, the model a "
                        f"{type(family).__name__}: it must be the same kind of model")
    if tuple(guide.data_shape) != family.data_shape:
        raise UserError(f"the autoguide draws data of shape {tuple(guide.data_shape)}, "
                        f"the model {family.data_shape}")
    if guide.num_classes != family.num_classes:
        raise UserError(f"the autoguide has model.num_classes={guide.num_classes}, the "
                        f"model {family.num_classes}: they must match")
    if guidance > 0:
        raise UserError("autoguidance and classifier-free guidance (--guidance_scale) do "
                        "not combine here: use one of them")


def guided_score_fn(family, params, labels, guidance_scale: float):
    """The model's score for `labels` (none if unconditional), classifier-free guided."""
    if not family.is_conditional:
        return family.score_fn(params, labels=labels if family.clusters else None)
    if guidance_scale == 0:
        return family.score_fn(params, labels=labels)
    return classifier_free_guidance(
        lambda x, t, y: family.score_fn(params, labels=y)(x, t), labels, guidance_scale,
        family.null_label,
    )


def task_sampler(family, task: str, shape, name: str | None, steps: int | None,
                 edit_strength: float | None):
    """`draw(key, score_fn, image, mask) -> (x, nfe)` for the task."""
    from diffusion import controllable

    cfg = family.config.sampling
    if task != "sdedit" and edit_strength is not None:
        raise UserError("an edit strength goes with SDEdit only")
    try:
        if task == "sample":
            sampler = family._plain_sampler(shape, name, steps)
            return lambda key, score_fn, image, mask: sampler(key, score_fn)
        pc = {"predictor": cfg.predictor if name in (None, "pc") else name,
              "corrector": cfg.corrector, "snr": cfg.snr,
              "n_corrector_steps": cfg.n_steps_each}
        common = {"eps": cfg.eps, "denoise": cfg.noise_removal}
        if task == "sdedit":
            if edit_strength is None or not 0.0 < float(edit_strength) <= 1.0:
                raise UserError(f"the SDEdit strength must lie in (0, 1], got {edit_strength}")
            strength = float(edit_strength)
            if steps is None:
                steps = max(1, round(strength * cfg.steps))
            edit = controllable.sdedit(
                family.sde, shape, strength=strength, steps=steps,
                sampler=pc.pop("predictor"), **pc, **common,
            )
            return lambda key, score_fn, image, mask: edit(key, score_fn, image)
        steps = cfg.steps if steps is None else steps
        if task == "inpaint":
            inpaint = controllable.inpainter(family.sde, shape, steps=steps, **pc, **common)
            return inpaint
        colorize = controllable.colorizer(family.sde, shape, steps=steps, **pc, **common)
        return lambda key, score_fn, image, mask: colorize(key, score_fn, image)
    except UserError:
        raise
    except (TypeError, ValueError) as err:
        what = "sampler" if task == "sample" else f"{task} sampler"
        raise UserError(f"{what}: {err}") from err


def plain_sampler(family, shape, name: str | None, steps: int | None):
    cfg = family.config.sampling
    if name is None and steps is None:
        return sampling.get_sampler_from_config(family.config, family.sde, shape)
    name = name or cfg.method
    options = sampling.options_from_config(cfg, name)
    # The config's step count belongs to the config's sampler; another sampler named
    # without steps keeps its own default (18 Heun steps for edm_heun, adaptive 'ode').
    if steps is None and name == cfg.method and name != "ode":
        steps = cfg.steps
    return sampling.get_sampler(name, family.sde, shape, steps=steps, eps=cfg.eps,
                                denoise=cfg.noise_removal, **options)
