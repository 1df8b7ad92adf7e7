"""Measures a trained model: FD, KID, precision/recall, classifier score, class balance and
bits/dim, each beside the same metric for real test images (the real-data floor).

`python evaluate.py --workdir runs/digits_vp [--samples samples.npz] [--num_samples N]
[--metrics fd,kid,pr,cs,bpd]` prints a table and writes metrics.json (default
WORKDIR/metrics.json) with every setting that decides the numbers. Without --samples it
draws --num_samples samples from the latest checkpoint. The config is the run's
(WORKDIR/config.json, written by train.py); `--config.eval.x=` / `--config.sampling.x=`
overrides apply to it, with or without `--config FILE`, which is checked against the
run's model (training/run_config.py).
2-D toy data gets the same sample metrics on its coordinates and nll (nats per point)
beside the true density's in place of bits/dim (evaluation/points.py).
`--protocol=fid50k` computes the literature's FID-50k instead: 50,000 samples against the
train split's Inception statistics (evaluation/fid_protocol.py, docs/evaluation.md).

Samples are drawn on the mesh of `config.sharding.mesh` with the train state's shardings.
A multi-host job passes the flags train.py takes (--coordinator_address, --num_processes,
--process_id, or --multihost); every process evaluates and process 0 writes the report.
"""

from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

from data import samples_file
from errors import RequestError, UserError
from evaluation import fid_protocol
from training import cli, run_config, writable

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (default: "
                                           "the run's WORKDIR/config.json).")
_WORKDIR = flags.DEFINE_string("workdir", None, "Workdir of a training run.")
_SAMPLES = flags.DEFINE_string("samples", None, "An .npz of samples (as sample.py writes); "
                               "default: draw them from the latest checkpoint.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", None, "How many samples to draw (or to "
                                    "use from --samples); default config.eval.num_samples.")
_METRICS = flags.DEFINE_string("metrics", None, "Comma-separated subset of fd,kid,pr,cs,bpd "
                               "(nll in place of bpd for 2-D toy points; default "
                               "config.eval.metrics).")
_INCEPTION = flags.DEFINE_string("inception_weights", None, "FID Inception weights file "
                                 "(pt_inception-2015-12-05-6726825d.pth) for non-digits data.")
_PROTOCOL = flags.DEFINE_enum("protocol", None, list(fid_protocol.PROTOCOLS), "floors (the "
                               "project's: metrics beside real-data floors) or fid50k (the "
                               "literature's FID); default config.eval.protocol.")
_FID_REFERENCE = flags.DEFINE_string("fid_reference", None, "fid50k: an .npz of the train "
                                     "split's Inception statistics (mu, sigma); default: "
                                     "computed once and cached.")
_OUT = flags.DEFINE_string("out", None, "Output JSON (default WORKDIR/metrics.json).")
_CHECKPOINT_STEP = flags.DEFINE_integer("checkpoint_step", None, "Checkpoint step to sample "
                                        "and score (default: the newest).")
flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = run_config.load_run_config(_WORKDIR.value, _CONFIG.value)
    if _SAMPLES.value is not None:  # a PNG or a text file: said now, not after the imports
        samples_file.check_is_npz(_SAMPLES.value)
    # Imported after the quick checks, so that bad input is refused before jax loads.
    import jax

    from evaluation import protocol, runner
    from training import eval_hook

    cli.maybe_initialize_distributed()
    which = protocol.parse_metrics(_METRICS.value or config.eval.metrics)
    eval_protocol = fid_protocol.check_protocol(_PROTOCOL.value or config.eval.protocol)
    if eval_protocol == fid_protocol.FID50K and _METRICS.value not in (None, "fd"):
        raise RequestError("--protocol=fid50k computes FID alone: leave out --metrics")
    if _NUM_SAMPLES.value is not None and _NUM_SAMPLES.value <= 0:
        raise RequestError(f"--num_samples must be positive, got {_NUM_SAMPLES.value}")
    if _CHECKPOINT_STEP.value is not None and _CHECKPOINT_STEP.value < 0:
        raise RequestError(f"--checkpoint_step must be >= 0, got {_CHECKPOINT_STEP.value}")
    out = Path(_OUT.value or Path(_WORKDIR.value) / "metrics.json")
    if out.suffix != ".json":
        raise RequestError(f"--out must end in .json, got {out}")
    writable.check_file(out, "--out")  # before any sampling or feature extraction
    if _INCEPTION.value and not Path(_INCEPTION.value).is_file():
        raise UserError(f"Inception weights file not found: {_INCEPTION.value}")
    report = eval_hook.evaluate(config, _WORKDIR.value, which=which,
                                samples_path=_SAMPLES.value, num_samples=_NUM_SAMPLES.value,
                                inception_weights=_INCEPTION.value or "",
                                checkpoint_step=_CHECKPOINT_STEP.value, protocol=eval_protocol,
                                fid_reference=_FID_REFERENCE.value or "")
    if jax.process_index() != 0:  # every process computed the same report; one writes it
        return
    runner.write_json(report, out)
    print(runner.format_table(report))
    logging.info("Wrote %s", out)


def run() -> None:
    """The entry point (`python evaluate.py`, the `scoregen-evaluate` script)."""
    cli.run_on_workdir(main)


if __name__ == "__main__":
    run()
