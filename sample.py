"""Samples a trained model into a PNG grid and an .npz of uint8 images (2-D toy data:
float `points` and a density picture).

`python sample.py --config configs/digits_vp.py --workdir runs/digits_vp --num_samples 1000
--out samples.npz` (EMA weights of the latest checkpoint; --sampler/--steps override the
config's sampler).

Controllable generation:
- class-conditional models: `--class_label K` (default: classes 0..K-1 in turn) and
  `--guidance_scale W` (classifier-free guidance, (1 + W) s(x, y) - W s(x));
- classifier guidance (any model): `--classifier_workdir DIR --classifier_config CFG
  [--classifier_scale S]` with a `model.family='noise_classifier'` run; if that run is a
  discriminator (`classifier.objective='discriminator'`, configs/digits_discriminator.py),
  discriminator guidance of an unconditional model: S grad log D / (1 - D), no labels;
- autoguidance (any diffusion model, no labels): `--autoguide_step N` (an earlier checkpoint
  of the same run) and/or `--autoguide_workdir DIR [--autoguide_config CFG]` (a weaker
  model of the same data and SDE), `[--autoguidance_scale W]`: (1 + W) s - W s_guide;
- from one input image (each of the num_samples samples starts from it):
  `--image in.png --mask mask.png` (inpainting: white = known, black = fill),
  `--image gray.png --colorize` (RGB models), `--image in.png --edit_strength S` (SDEdit).
The .npz records what was done; `labels` holds the requested classes.

Sampling runs on the mesh of `config.sharding.mesh` with the train state's shardings, each
batch split over the devices (the same samples for a seed whatever the device count). A
multi-host job passes the flags train.py takes (--coordinator_address, --num_processes,
--process_id, or --multihost); every process samples and process 0 writes the files.
"""

from pathlib import Path

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from errors import UserError
from training import cli, image_input, images

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "How many images to draw.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per sampler call.")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default WORKDIR/samples.npz); the PNG "
                           "grid goes beside it with a .png suffix.")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: the config's); with "
                               "--image, the predictor of the predictor-corrector steps.")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: config.sampling.steps "
                              "for the config's sampler, a sampler's own default otherwise).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to sample "
                                        "from (default: the newest).")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample with the EMA weights.")
_CLASS_LABEL = flags.DEFINE_integer("class_label", None, "Class of every sample (conditional "
                                    "or classifier-guided models; default: 0..K-1 in turn).")
_GUIDANCE = flags.DEFINE_float("guidance_scale", None, "Classifier-free guidance weight W >= 0 "
                               "(default: config.sampling.guidance_scale).")
_CLASSIFIER_WORKDIR = flags.DEFINE_string("classifier_workdir", None, "Workdir of a trained "
                                          "noise classifier, for classifier guidance.")
_CLASSIFIER_CONFIG = config_flags.DEFINE_config_file("classifier_config", None,
                                                     "The noise classifier's config file.")
_CLASSIFIER_SCALE = flags.DEFINE_float("classifier_scale", None, "Classifier guidance scale "
                                       "(default 1: the exact conditional score).")
_AUTOGUIDE_WORKDIR = flags.DEFINE_string("autoguide_workdir", None, "Workdir of the autoguide: "
                                         "a weaker model of the same data and SDE (default: "
                                         "--workdir, with --autoguide_step).")
_AUTOGUIDE_CONFIG = config_flags.DEFINE_config_file("autoguide_config", None, "The autoguide's "
                                                    "config file (default: --config).")
_AUTOGUIDE_STEP = flags.DEFINE_integer("autoguide_step", None, "Checkpoint step of the autoguide "
                                       "(default: the newest in --autoguide_workdir).")
_AUTOGUIDANCE = flags.DEFINE_float("autoguidance_scale", None, "Autoguidance weight W >= 0: "
                                   "(1 + W) s - W s_guide (default 1).")
_IMAGE = flags.DEFINE_string("image", None, "Input image (PNG) for --mask, --colorize or "
                             "--edit_strength; the model's size and channels.")
_MASK = flags.DEFINE_string("mask", None, "Inpainting mask (PNG, the image's size): white = "
                            "known pixel, black = to fill.")
_COLORIZE = flags.DEFINE_bool("colorize", False, "Colorize the gray --image (RGB models).")
_EDIT_STRENGTH = flags.DEFINE_float("edit_strength", None, "SDEdit of --image: noise it to "
                                    "time S*T, S in (0, 1], and denoise.")
flags.mark_flags_as_required(["config", "workdir"])


def _task() -> str:
    """The task the flags ask for; UserError for a combination that makes no sense."""
    edits = {"--mask": _MASK.value is not None, "--colorize": _COLORIZE.value,
             "--edit_strength": _EDIT_STRENGTH.value is not None}
    asked = [flag for flag, on in edits.items() if on]
    if _IMAGE.value is None:
        if asked:
            raise UserError(f"{asked[0]} needs --image (the input picture)")
        return "sample"
    if len(asked) != 1:
        raise UserError("--image goes with exactly one of --mask (inpainting), --colorize or "
                        f"--edit_strength (SDEdit), got {', '.join(asked) or 'none'}")
    strength = _EDIT_STRENGTH.value
    if strength is not None and not 0.0 < strength <= 1.0:
        raise UserError(f"--edit_strength must lie in (0, 1], got {strength}")
    return {"--mask": "inpaint", "--colorize": "colorize", "--edit_strength": "sdedit"}[asked[0]]


def _check_flags() -> tuple[Path, str]:
    num, batch, steps = _NUM_SAMPLES.value, _BATCH_SIZE.value, _STEPS.value
    if num <= 0:
        raise UserError(f"--num_samples must be positive, got {num}")
    if batch <= 0:
        raise UserError(f"--batch_size must be positive, got {batch}")
    if steps is not None and steps <= 0:
        raise UserError(f"--steps must be positive, got {steps}")
    if _CHECKPOINT_STEP.value is not None and _CHECKPOINT_STEP.value < 0:
        raise UserError(f"--checkpoint_step must be >= 0, got {_CHECKPOINT_STEP.value}")
    out = Path(_OUT.value or Path(_WORKDIR.value) / "samples.npz")
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz, got {out}")
    if (_CLASSIFIER_WORKDIR.value is None) != (_CLASSIFIER_CONFIG.value is None):
        raise UserError("classifier guidance needs both --classifier_workdir and "
                        "--classifier_config")
    if _CLASSIFIER_SCALE.value is not None and _CLASSIFIER_WORKDIR.value is None:
        raise UserError("--classifier_scale needs a classifier: pass --classifier_workdir and "
                        "--classifier_config")
    _check_autoguide()
    task = _task()
    if task == "colorize" and _CONFIG.value.data.num_channels == 1:
        raise UserError(f"--colorize needs an RGB model; {_CONFIG.value.data.dataset!r} has 1 "
                        "channel")
    _check_conditioning(_CONFIG.value)
    return out, task


def _autoguided() -> bool:
    return _AUTOGUIDE_WORKDIR.value is not None or _AUTOGUIDE_STEP.value is not None


def _check_autoguide() -> None:
    if _AUTOGUIDE_CONFIG.value is not None and _AUTOGUIDE_WORKDIR.value is None:
        raise UserError("--autoguide_config needs --autoguide_workdir (the guide's run)")
    scale = _AUTOGUIDANCE.value
    if scale is not None and not _autoguided():
        raise UserError("--autoguidance_scale needs an autoguide: pass --autoguide_step "
                        "and/or --autoguide_workdir")
    if scale is not None and not scale >= 0:
        raise UserError(f"--autoguidance_scale must be >= 0, got {scale}")
    if _AUTOGUIDE_STEP.value is not None and _AUTOGUIDE_STEP.value < 0:
        raise UserError(f"--autoguide_step must be >= 0, got {_AUTOGUIDE_STEP.value}")


def _restore_guide(inference, config, model_step: int, record: dict, mesh):
    """The autoguide's (family, state) on the model's `mesh`, or None; its provenance goes
    into `record`."""
    if not _autoguided():
        return None
    workdir = _AUTOGUIDE_WORKDIR.value or _WORKDIR.value
    family, state, step = inference.restore_guide(
        config, _AUTOGUIDE_CONFIG.value or config, workdir, step=_AUTOGUIDE_STEP.value,
        mesh=mesh)
    if Path(workdir).resolve() == Path(_WORKDIR.value).resolve() and step == model_step:
        raise UserError(f"the autoguide is the model itself (step {step} of {workdir}): pass "
                        "an earlier --autoguide_step or another --autoguide_workdir")
    record.update(autoguide_workdir=np.str_(workdir), autoguide_step=np.int64(step),
                  autoguidance_scale=np.float64(_autoguidance_scale()))
    return family, state


def _classifier_scale() -> float:
    return 1.0 if _CLASSIFIER_SCALE.value is None else _CLASSIFIER_SCALE.value


def _autoguidance_scale() -> float:
    return 1.0 if _AUTOGUIDANCE.value is None else _AUTOGUIDANCE.value


def _check_conditioning(config) -> None:
    """Class label and guidance flags against the config (the sampler checks them again)."""
    k, label, w = config.model.num_classes, _CLASS_LABEL.value, _GUIDANCE.value
    if label is not None:
        if not k and _CLASSIFIER_WORKDIR.value is None:
            raise UserError("--class_label needs a class-conditional model or a classifier; "
                            "this model is unconditional (model.num_classes=0)")
        if label < 0 or (k and label >= k):
            raise UserError(f"--class_label {label} is out of range: the classes are "
                            f"0..{k - 1 if k else 'K-1'}")
    if w is not None:
        if not w >= 0:
            raise UserError(f"--guidance_scale must be >= 0, got {w}")
        if w > 0 and not k:
            raise UserError("--guidance_scale (classifier-free guidance) needs a "
                            "class-conditional model; this one is unconditional "
                            "(model.num_classes=0)")
        if w > 0 and not config.training.class_dropout > 0:
            raise UserError("--guidance_scale needs a model trained with "
                            "training.class_dropout > 0 (a null label); this one has none")
    scale = _CLASSIFIER_SCALE.value
    if scale is not None and not scale >= 0:
        raise UserError(f"--classifier_scale must be >= 0, got {scale}")


def _inputs(config, task: str) -> tuple[dict, dict]:
    """(image/mask arrays for the sampler in data space, what to record of them)."""
    if task == "sample":
        return {}, {}
    data = config.data
    shape = (data.image_size, data.image_size, data.num_channels)
    expected = (*shape[:2], 1) if task == "colorize" else shape
    pixels, image = image_input.load_image(_IMAGE.value, expected, centered=data.centered,
                                         what="--image")
    arrays = {"image": image}
    record = {"input_path": np.str_(_IMAGE.value), "input_image": pixels}
    if task == "inpaint":
        mask = image_input.load_mask(_MASK.value, shape, what="--mask")
        arrays["mask"] = mask
        record.update(mask_path=np.str_(_MASK.value), input_mask=mask.astype(np.uint8))
    if task == "sdedit":
        record["edit_strength"] = np.float64(_EDIT_STRENGTH.value)
    return arrays, record


def _sampler_name(config, task: str) -> str:
    cfg = config.sampling
    if task == "sample":
        return _SAMPLER.value or cfg.method
    predictor = cfg.predictor if _SAMPLER.value in (None, "pc") else _SAMPLER.value
    return f"{task}: pc({predictor}, {cfg.corrector})"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    cli.maybe_initialize_distributed()
    out, task = _check_flags()
    config = _CONFIG.value
    arrays, record = _inputs(config, task)
    import jax  # after the checks, so that bad input fails at once

    from training import inference

    family, state, step = inference.restore_latest(config, _WORKDIR.value,
                                                   step=_CHECKPOINT_STEP.value)
    # The classifier and the autoguide are placed on the model's mesh, to run beside it.
    mesh = inference.mesh_of(state)
    classifier = None
    if _CLASSIFIER_WORKDIR.value is not None:
        cls_family, cls_state, cls_step = inference.restore_classifier(
            config, _CLASSIFIER_CONFIG.value, _CLASSIFIER_WORKDIR.value, mesh=mesh)
        classifier = (cls_family, cls_state)
        record.update(classifier_workdir=np.str_(_CLASSIFIER_WORKDIR.value),
                      classifier_step=np.int64(cls_step),
                      classifier_scale=np.float64(_classifier_scale()))
    guide = _restore_guide(inference, config, step, record, mesh)
    generate = inference.make_generator(
        family, _NUM_SAMPLES.value, batch_size=_BATCH_SIZE.value, sampler=_SAMPLER.value,
        steps=_STEPS.value, use_ema=_USE_EMA.value, class_label=_CLASS_LABEL.value,
        guidance_scale=_GUIDANCE.value, classifier=classifier,
        classifier_scale=_classifier_scale(),
        task=task, edit_strength=_EDIT_STRENGTH.value, guide=guide,
        guide_scale=_autoguidance_scale(), **arrays,
    )
    samples, nfe = generate(state, _SEED.value)
    family_is_points = not family.is_image_data
    # Recorded with the samples so that evaluate.py can state how they were drawn.
    sampler = getattr(family, "sampler_name", None) or _sampler_name(config, task)
    if classifier is not None:
        kind = "discriminator" if classifier[0].is_discriminator else "classifier"
        sampler += f" + {kind} guidance (scale {float(record['classifier_scale']):g})"
    if guide is not None:
        sampler += (f" + autoguidance (w={_autoguidance_scale():g}, guide "
                    f"{record['autoguide_workdir']} step {int(record['autoguide_step'])})")
    provenance = {
        "sampler": np.str_(sampler),
        "nfe": np.int64(nfe),
        "seed": np.int64(_SEED.value),
        "step": np.int64(step),
        "task": np.str_(task),
        **record,
    }
    if getattr(family, "is_conditional", False):
        provenance["guidance_scale"] = np.float64(
            config.sampling.guidance_scale if _GUIDANCE.value is None else _GUIDANCE.value)
    if generate.labels is not None:
        provenance["labels"] = generate.labels.astype(np.int32)
    if jax.process_index() != 0:  # every process holds all the samples; one writes them
        return

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp.npz")
    if family_is_points:  # 2-D toy data: float points and a density picture
        np.savez_compressed(tmp, points=samples, **provenance)
        picture = images.points_picture(samples)
    else:
        np.savez_compressed(tmp, images=samples, **provenance)
        picture = images.make_grid(samples[:100])
    tmp.replace(out)
    images.save_png(out.with_suffix(".png"), picture)
    logging.info("Wrote %d samples (%s) from checkpoint step %d (%d score evaluations per "
                 "batch) to %s and %s", len(samples), task, step, int(nfe), out,
                 out.with_suffix(".png"))


if __name__ == "__main__":
    cli.run(main)
