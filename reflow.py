"""Draws reflow pairs from a trained diffusion or flow run: `python reflow.py --workdir
runs/digits_rf --num_pairs 10000 --out runs/digits_rf/reflow_pairs.npz`. Each pair is a
prior draw and the image a deterministic sampler (default: the run's own) takes it to;
a `model.family='reflow'` run (configs/digits_reflow.py) trains on them (docs/sampling.md,
"Reflow"). Multi-host: train.py's distributed flags; process 0 writes the file.
"""


from absl import app, flags
from ml_collections import config_flags

from training import cli, run_config, writable

F = flags
_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (default: "
                                          "the run's WORKDIR/config.json).")
_WORKDIR = F.DEFINE_string("workdir", None, "Workdir of the trained run drawing the pairs.")
_NUM = F.DEFINE_integer("num_pairs", 10000, "How many pairs to draw.")
_BATCH = F.DEFINE_integer("batch_size", 500, "Pairs per sampler call.")
_OUT = F.DEFINE_string("out", None, "Output .npz (default WORKDIR/reflow_pairs.npz).")
_SAMPLER = F.DEFINE_string("sampler", None, "A deterministic sampler (default: the run's).")
_STEPS = F.DEFINE_integer("steps", None, "Sampler steps (default: the run's sampler's).")
_SEED = F.DEFINE_integer("seed", 0, "Seed of the prior draws.")
_CKPT_STEP = F.DEFINE_integer("checkpoint_step", None, "Checkpoint step (default: newest).")
_USE_EMA = F.DEFINE_bool("use_ema", True, "Draw with the EMA weights.")
F.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    config = run_config.load_run_config(_WORKDIR.value, _CONFIG.value)
    out = writable.npz_out(_OUT.value, _WORKDIR.value, "reflow_pairs.npz")
    from training.reflow_pairs import PairsRequest, draw_pairs

    request = PairsRequest(_NUM.value, batch_size=_BATCH.value, sampler=_SAMPLER.value,
                           steps=_STEPS.value, seed=_SEED.value,
                           checkpoint_step=_CKPT_STEP.value, use_ema=_USE_EMA.value)
    cli.maybe_initialize_distributed()
    import jax

    from data.pairs_file import save_pairs
    noise, image, provenance = draw_pairs(config, _WORKDIR.value, request)
    if jax.process_index() == 0:
        save_pairs(out, noise, image, provenance)
        print(f"Wrote {len(noise)} reflow pairs ({provenance['sampler']}, {provenance['nfe']} "
              f"evaluations a pair, step {provenance['teacher_step']}) to {out}")


def run() -> None:
    """The entry point (`python reflow.py`, the `scoregen-reflow` script)."""
    cli.run_on_workdir(main)


if __name__ == "__main__":
    run()
