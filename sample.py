"""Samples a trained model into a PNG grid and an .npz of uint8 images (2-D toy data:
float `points` and a density picture).

`python sample.py --config configs/digits_vp.py --workdir runs/digits_vp --num_samples 1000
--out samples.npz` (EMA weights of the latest checkpoint; --sampler/--steps override the
config's sampler).
"""

from pathlib import Path

import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags

from training import cli, images, inference
from training.errors import UserError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 64, "How many images to draw.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 256, "Images per sampler call.")
_OUT = flags.DEFINE_string("out", None, "Output .npz (default WORKDIR/samples.npz); the PNG "
                           "grid goes beside it with a .png suffix.")
_SAMPLER = flags.DEFINE_string("sampler", None, "Sampler name (default: the config's).")
_STEPS = flags.DEFINE_integer("steps", None, "Sampler steps (default: config.sampling.steps).")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_USE_EMA = flags.DEFINE_bool("use_ema", True, "Sample with the EMA weights.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    num, batch = _NUM_SAMPLES.value, _BATCH_SIZE.value
    if num <= 0:
        raise UserError(f"--num_samples must be positive, got {num}")
    if batch <= 0:
        raise UserError(f"--batch_size must be positive, got {batch}")
    out = Path(_OUT.value or Path(_WORKDIR.value) / "samples.npz")
    if out.suffix != ".npz":
        raise UserError(f"--out must end in .npz, got {out}")

    family, state, step = inference.restore_latest(_CONFIG.value, _WORKDIR.value)
    samples, nfe = inference.generate(
        family, state, num, batch_size=batch, seed=_SEED.value, sampler=_SAMPLER.value,
        steps=_STEPS.value, use_ema=_USE_EMA.value,
    )
    family_is_points = not family.is_image_data
    # Recorded with the samples so that evaluate.py can state how they were drawn.
    provenance = {
        "sampler": np.str_(_SAMPLER.value or _CONFIG.value.sampling.method),
        "nfe": np.int64(nfe),
        "seed": np.int64(_SEED.value),
        "step": np.int64(step),
    }

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
    logging.info("Wrote %d samples from checkpoint step %d (%d score evaluations per batch) "
                 "to %s and %s", num, step, int(nfe), out, out.with_suffix(".png"))


if __name__ == "__main__":
    cli.run(main)
