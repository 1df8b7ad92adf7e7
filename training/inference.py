"""Loading a trained run for sampling and evaluation, and drawing samples from it (also
class-conditionally, guided, or from an input image: inpainting, colorization, SDEdit)."""

import math
from pathlib import Path

import jax
import ml_collections
import numpy as np

from training import images, sharding
from training.checkpoint import Checkpointer, abstract_with_shardings
from training.errors import CheckpointError, UserError
from training.families import get_family
from training.state import TrainState

# What a guiding noise classifier must share with the diffusion model: the data it saw and
# the forward SDE that noised it (per SDE, the parameters it reads).
_CLASSIFIER_SHARED = ("data.dataset", "data.image_size", "data.num_channels", "data.centered",
                      "training.sde")
_SDE_PARAMETERS = {"vpsde": ("model.beta_min", "model.beta_max"),
                   "subvpsde": ("model.beta_min", "model.beta_max"),
                   "vesde": ("model.sigma_min", "model.sigma_max")}


def restore_latest(config: ml_collections.ConfigDict, workdir: str | Path,
                   step: int | None = None):
    """Returns (family, state, step) from the newest checkpoint (or the one at `step`),
    placed on one device.

    Raises CheckpointError if the workdir has no checkpoint (at `step`) or one of another
    config.
    """
    checkpoints = Path(workdir) / "checkpoints"
    if not checkpoints.is_dir():
        raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")
    family = get_family(config)
    ckpt = Checkpointer(workdir, config)
    try:
        if step is None:
            step = ckpt.latest_step()
            if step is None:
                raise CheckpointError(f"no checkpoints in {workdir}: train first with train.py")
        elif step not in (saved := ckpt.all_steps()):
            raise CheckpointError(f"no checkpoint at step {step} in {workdir} (it has "
                                  f"{saved or 'none'})")
        mesh = sharding.make_mesh((("data", 1), ("fsdp", 1)), jax.devices()[:1])
        abstract: TrainState = jax.eval_shape(family.init_state, jax.random.PRNGKey(0))
        placed = jax.tree.map(lambda _: sharding.replicated(mesh), abstract)
        state, _ = ckpt.restore(step, abstract_with_shardings(abstract, placed))
    finally:
        ckpt.close()
    return family, state, step


def make_generator(
    family,
    num: int,
    *,
    batch_size: int = 256,
    sampler: str | None = None,
    steps: int | None = None,
    use_ema: bool = True,
    class_label: int | None = None,
    guidance_scale: float | None = None,
    classifier: tuple | None = None,
    classifier_scale: float = 1.0,
    task: str = "sample",
    image: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    edit_strength: float | None = None,
    guide: tuple | None = None,
    guide_scale: float = 1.0,
):
    """`generate(state, seed=0) -> (samples, nfe per batch)` for `num` samples, compiled once.

    Samples are uint8 images (N, H, W, C), or float32 points (N, 2) for 2-D toy data.
    Batch `i` uses `fold_in(PRNGKey(seed), i)`, so a seed gives the same samples whatever
    the caller. `generate` raises UserError if the sampler produces non-finite values.

    Class-conditional models, and any model guided by a `classifier` (a
    `(noise_classifier family, its state)` pair from `restore_latest`), sample the
    classes `generate.labels` (int32 (num,)): `class_label` for all, or None for
    0, 1, ..., K-1 cycling; for other models `generate.labels` is None. `guidance_scale`,
    `classifier_scale`, `task`, `image` and `mask` (data space, one image for every sample)
    and `edit_strength` are those of the family's `make_sampler`. `guide` (a `(family,
    state)` pair from `restore_guide`) autoguides the model with weight `guide_scale`. Bad
    requests raise UserError here, before any compile.
    """
    if num <= 0:
        raise UserError(f"the number of samples must be positive, got {num}")
    if batch_size <= 0:
        raise UserError(f"the sampling batch size must be positive, got {batch_size}")
    batch_size = min(batch_size, num)
    classifier_family, classifier_state = classifier if classifier is not None else (None, None)
    if class_label is not None and classifier is not None and classifier_family.is_discriminator:
        raise UserError("a class label needs a label classifier; this one is a discriminator "
                        "(classifier.objective='discriminator'), which guides towards the "
                        "data without labels")
    sample = family.make_sampler(
        batch_size, name=sampler, steps=steps, guidance_scale=guidance_scale,
        classifier=classifier_family, classifier_scale=classifier_scale, task=task,
        edit_strength=edit_strength, guide=None if guide is None else guide[0],
        guide_scale=guide_scale,
    )
    num_batches = math.ceil(num / batch_size)
    label_classes = getattr(family, "num_classes", 0) or getattr(classifier_family,
                                                                  "num_classes", 0)
    labels = None
    if label_classes or class_label is not None:
        # Checked (range, conditional model) by the sampler; the last batch is filled up.
        labels = family.sample_labels(
            class_label, num_batches * batch_size, label_classes
        )
    classifier_params = (None if classifier is None
                         else classifier_family.sample_params(classifier_state))
    # The guide samples with its EMA weights (or raw ones) as the model does.
    guide_params = None if guide is None else guide[0].sample_params(guide[1], use_ema=use_ema)

    def generate(state: TrainState, seed: int = 0) -> tuple[np.ndarray, int]:
        params = family.sample_params(state, use_ema=use_ema)
        key = jax.random.PRNGKey(seed)
        chunks, nfe = [], 0
        for i in range(num_batches):
            batch_labels = None if labels is None else labels[i * batch_size:(i + 1) * batch_size]
            x, nfe = sample(params, jax.random.fold_in(key, i), batch_labels,
                            classifier_params, image, mask, guide_params)
            x = np.asarray(jax.device_get(x))
            if not np.isfinite(x).all():
                raise UserError("the sampler produced non-finite values; nothing was written")
            chunks.append(images.to_uint8(x) if family.is_image_data else x.astype(np.float32))
        return np.concatenate(chunks)[:num], int(nfe)

    generate.labels = None if labels is None else labels[:num].copy()
    return generate


def generate(family, state: TrainState, num: int, *, seed: int = 0, **options):
    """`num` samples from `state` and the score evaluations per batch (see make_generator,
    whose keyword options this takes)."""
    return make_generator(family, num, **options)(state, seed)


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _differing(keys: tuple[str, ...], theirs: ml_collections.ConfigDict,
               mine: ml_collections.ConfigDict) -> list[str]:
    return [f"{k}={_get(theirs, k)!r} vs {_get(mine, k)!r}"
            for k in keys if _get(theirs, k) != _get(mine, k)]


def restore_guide(model_config: ml_collections.ConfigDict,
                  guide_config: ml_collections.ConfigDict, workdir: str | Path,
                  step: int | None = None):
    """(family, state, step) of the autoguide in `workdir` (at `step`, else its newest
    checkpoint): a weaker diffusion model of the model's data and SDE, checked against
    the model (UserError naming what differs)."""
    if guide_config.model.family != model_config.model.family:
        raise UserError(f"the autoguide config is of model.family="
                        f"{guide_config.model.family!r}, the model's "
                        f"{model_config.model.family!r}: they must match")
    if model_config.model.family not in ("diffusion", "latent_diffusion"):
        raise UserError(f"autoguidance guides diffusion models, not model.family="
                        f"{model_config.model.family!r}")
    keys = (_CLASSIFIER_SHARED + _SDE_PARAMETERS.get(model_config.training.sde, ())
            + ("model.num_classes",))
    if model_config.model.family == "latent_diffusion":
        keys += ("latent.vae_config", "latent.vae_workdir")
    diffs = _differing(keys, guide_config, model_config)
    if diffs:
        raise UserError("the autoguide was trained on other data or another SDE than the "
                        "model (guide vs model: " + "; ".join(diffs) + ")")
    return restore_latest(guide_config, workdir, step=step)


def restore_classifier(model_config: ml_collections.ConfigDict,
                       classifier_config: ml_collections.ConfigDict, workdir: str | Path):
    """(family, state, step) of the noise classifier in `workdir`, checked against the
    model it is to guide (UserError naming what differs)."""
    if classifier_config.model.family != "noise_classifier":
        raise UserError(f"the classifier config is of model.family="
                        f"{classifier_config.model.family!r}, not 'noise_classifier'")
    keys = _CLASSIFIER_SHARED + _SDE_PARAMETERS.get(model_config.training.sde, ())
    diffs = _differing(keys, classifier_config, model_config)
    if diffs:
        raise UserError("the classifier was trained on other data or another SDE than the "
                        "model (classifier vs model: " + "; ".join(diffs) + ")")
    return restore_latest(classifier_config, workdir)

