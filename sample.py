"""Samples a trained run into an .npz and a PNG grid beside it (2-D toy data: `points` and a
density picture): `python sample.py --workdir runs/digits_vp --out s.npz`. Flags for
labels, prompts and guidance (classifier-free, classifier, autoguidance) and for inpainting,
colorization and SDEdit of `--image` make one `SampleRequest`, checked before anything is
read; the .npz records it (docs/sampling.md). Multi-host: train.py's distributed flags.
"""


from absl import app, flags, logging
from ml_collections import config_flags

from errors import RequestError
from training import cli, image_input, images, run_config, writable

F = flags
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (default: "
                                          "the run's WORKDIR/config.json).")
_WORKDIR = F.DEFINE_string("workdir", None, "Workdir of a training run.")
_NUM = F.DEFINE_integer("num_samples", 64, "How many samples to draw.")
_BATCH = F.DEFINE_integer("batch_size", 256, "Samples per sampler call.")
_OUT = F.DEFINE_string("out", None, "Output .npz (default WORKDIR/samples.npz); the PNG next "
                       "to it.")
_SAMPLER = F.DEFINE_string("sampler", None, "Sampler (default: the config's); with --image, "
                           "the predictor.")
_STEPS = F.DEFINE_integer("steps", None, "Sampler steps (default: the config's sampler's).")
_SEED = F.DEFINE_integer("seed", 0, "Sampling seed.")
_CKPT_STEP = F.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: newest).")
_USE_EMA = F.DEFINE_bool("use_ema", True, "Sample with the EMA weights.")
_LABEL = F.DEFINE_integer("class_label", None, "Class of every sample (default 0..K-1).")
_GUIDANCE = F.DEFINE_float("guidance_scale", None, "Classifier-free guidance W >= 0.")
_CLS_WORKDIR = F.DEFINE_string("classifier_workdir", None, "A noise classifier's workdir.")
_CLS_CONFIG = config_flags.DEFINE_config_file("classifier_config", None, "Its config.")
_CLS_SCALE = F.DEFINE_float("classifier_scale", None, "Classifier guidance scale (default 1).")
_AG_WORKDIR = F.DEFINE_string("autoguide_workdir", None, "The autoguide's workdir.")
_AG_CONFIG = config_flags.DEFINE_config_file("autoguide_config", None, "The autoguide's config.")
_AG_STEP = F.DEFINE_integer("autoguide_step", None, "The autoguide's checkpoint step.")
_AG_SCALE = F.DEFINE_float("autoguidance_scale", None, "Autoguidance weight (default 1).")
_IMAGE = F.DEFINE_string("image", None, "Input image (PNG) for --mask/--colorize/--edit_strength.")
_MASK = F.DEFINE_string("mask", None, "Inpainting mask (PNG): white = known, black = fill.")
_COLORIZE = F.DEFINE_bool("colorize", False, "Colorize the gray --image (RGB models).")
_STRENGTH = F.DEFINE_float("edit_strength", None, "SDEdit: noise --image to S*T, denoise.")
_PROMPT = F.DEFINE_string("prompt", None, "A text-conditional model's prompt.")
_PROMPTS_FILE = F.DEFINE_string("prompts_file", None, "One prompt per line: --num_samples each.")
F.mark_flags_as_required(["workdir"])


def _task() -> str:
    """The task the image flags ask for; RequestError for a combination that makes no sense."""
    edits = {"--mask": _MASK.value is not None, "--colorize": _COLORIZE.value,
             "--edit_strength": _STRENGTH.value is not None}
    asked = [flag for flag, on in edits.items() if on]
    if _IMAGE.value is None and asked:
        raise RequestError(f"{asked[0]} needs --image (the input picture)")
    if _IMAGE.value is not None and len(asked) != 1:
        raise RequestError("--image goes with exactly one of --mask (inpainting), --colorize or "
                           f"--edit_strength (SDEdit), got {', '.join(asked) or 'none'}")
    return {"--mask": "inpaint", "--colorize": "colorize",
            "--edit_strength": "sdedit"}[asked[0]] if asked else "sample"


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = run_config.load_run_config(_WORKDIR.value, _CONFIG.value)
    # Before any sampling: a folder that cannot be written fails now, not after the draw.
    out = writable.npz_out(_OUT.value, _WORKDIR.value, "samples.npz")
    writable.check_file(out.with_suffix(".png"), "--out's picture")
    # Imported after the quick checks, so that bad input is refused before jax loads.
    from training.families.request import SampleRequest
    from training.sample_run import Sources, draw, read_prompts

    cli.maybe_initialize_distributed()
    sources = Sources(_WORKDIR.value, _CKPT_STEP.value, _CLS_WORKDIR.value, _CLS_CONFIG.value,
                      _AG_WORKDIR.value, _AG_CONFIG.value, _AG_STEP.value)
    sources.check(classifier_scale=_CLS_SCALE.value, autoguidance_scale=_AG_SCALE.value)
    task = _task()
    prompts = read_prompts(_PROMPT.value, _PROMPTS_FILE.value)
    image, mask, inputs = image_input.load_inputs(config.data, task, _IMAGE.value, _MASK.value)
    per_prompt = len(prompts) if prompts else 1  # --num_samples of each prompt
    request = SampleRequest(
        _NUM.value * per_prompt, prompts=prompts, batch_size=_BATCH.value,
        sampler=_SAMPLER.value, steps=_STEPS.value, seed=_SEED.value, use_ema=_USE_EMA.value,
        labels=_LABEL.value, guidance_scale=_GUIDANCE.value, task=task,
        edit_strength=_STRENGTH.value, image=image, mask=mask,
        **sources.request_scales(_CLS_SCALE.value, _AG_SCALE.value))
    import jax  # after the checks, so that bad input fails at once

    from evaluation.samples_file import save_samples
    samples, record = draw(config, sources, request)
    if jax.process_index() != 0:  # every process holds all the samples; one writes them
        return
    save_samples(out, samples, {**record, **inputs})
    images.save_png(out.with_suffix(".png"), images.samples_picture(samples, per_prompt))
    logging.info("Wrote %d samples (%s) from checkpoint step %d (%d score evaluations per "
                 "batch) to %s", len(samples), task, record["step"], record["nfe"], out)


def run() -> None:
    """The entry point (`python sample.py`, the `scoregen-sample` script)."""
    cli.run_on_workdir(main)


if __name__ == "__main__":
    run()
