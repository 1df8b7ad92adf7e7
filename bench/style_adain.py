"""Feed-forward style transfer's forward pass (AdaIN: encoder on the content and the style,
AdaIN, decoder): images per second at a given size, on this machine's devices.

The model is a trained run's (`--workdir`) or, without one, `configs/style_adain.py`'s
architecture: style_cnn up to relu4_1 and its mirrored decoder, with the pinned style_cnn
weights if they load and random weights otherwise (the time is the same; the run says
which), and a decoder at its initialisation. Each batch size is timed after its
compilation, best of `--repeats` calls, with the process's CPU time per image beside
(on a loaded machine the best wall time is the fairer figure).

    python bench/style_adain.py                      # 256x256, batches 1 and 8
    python bench/style_adain.py --workdir runs/style_adain --size 512 --batches 1
    python bench/style_adain.py --set style.decoder_width=2 --set style.content_layer=relu4_1
"""

from __future__ import annotations

import argparse
import dataclasses
import time

import jax
import numpy as np
from flax import nnx


def _family(workdir: str | None, overrides: list[str]):
    """(family, params, what the weights are)."""
    if workdir:
        from training import stylize

        stylizer = stylize.load(workdir)
        return stylizer.family, stylizer.params, f"{workdir} step {stylizer.step}"
    from configs import style_adain
    from style import feature_nets
    from training.families import get_family

    config = style_adain.get_config()
    for override in overrides:  # SECTION.KEY=VALUE, typed as the config's value
        key, _, value = override.partition("=")
        section, name = key.split(".")
        kind = type(config[section][name])
        config[section][name] = (value.lower() in ("1", "true") if kind is bool
                                 else kind(value))
    network = feature_nets.get(config.style.encoder)
    try:
        network.load(config.style.vgg_weights or None)
        what = "pinned style_cnn weights, untrained decoder"
    except Exception as err:  # the pinned file missing or not yet pinned: same timing
        from networks.style_cnn import StyleCNN

        feature_nets.register(dataclasses.replace(
            network, load=lambda weights: StyleCNN(rngs=nnx.Rngs(0))))
        what = f"random style_cnn weights ({' '.join(str(err).split())[:80]})"
    family = get_family(config)
    params = family.sample_params(family.init_state(jax.random.PRNGKey(0)))
    return family, params, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="a change to configs/style_adain.py (without --workdir)")
    args = parser.parse_args()
    family, params, what = _family(args.workdir, args.set)
    stylize = family.make_stylizer()
    rng = np.random.default_rng(0)
    print(f"{jax.device_count()} {jax.default_backend()} device(s); {what}; "
          f"{args.size}x{args.size} content and style")
    for batch in args.batches:
        content = rng.random((batch, args.size, args.size, 3), np.float32)
        style = rng.random((batch, args.size, args.size, 3), np.float32)
        alpha = np.float32(1.0)
        start = time.perf_counter()
        jax.block_until_ready(stylize(params, content, style, alpha))
        compile_s = time.perf_counter() - start
        best, cpu = float("inf"), time.process_time()
        for _ in range(args.repeats):
            start = time.perf_counter()
            jax.block_until_ready(stylize(params, content, style, alpha))
            best = min(best, time.perf_counter() - start)
        cpu = (time.process_time() - cpu) / (args.repeats * batch)
        print(f"batch {batch}: {batch / best:.1f} images/s (best of {args.repeats}: "
              f"{best * 1000:.0f} ms per call; compiled in {compile_s:.1f} s; process CPU "
              f"{cpu * 1000:.0f} ms per image)")


if __name__ == "__main__":
    main()
