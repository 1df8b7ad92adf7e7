"""Neural style transfer of one image: `python stylize.py --content chelsea --style brick
--out out.png`.

By optimisation (Gatys et al.; `style/`): the picture is optimised until a feature
network's features of it match the content image's and its Gram matrices the style
image's, by L-BFGS or Adam, optionally coarse to fine (`--scales`) and on luminance only
(`--preserve_color`). The feature network is the offline default `style_cnn` (pinned in the
repository) or VGG-19 from a weights file you give (`--features vgg19 --weights FILE`).

Feed-forward (`--workdir W`, a `configs/style_adain.py` run): one pass of the trained
AdaIN network, any content and any style, `--alpha` the style's share.

Images are files or the names of the photos that ship with scikit-image and scikit-learn
(`--list_images`). Bad input is one line and nothing is written; the PNG appears only when
the picture is done (written beside, then renamed into place).
"""

import json
import os
import tempfile
from pathlib import Path

from absl import app, flags, logging

from errors import RequestError
from training import cli

F = flags
_CONTENT = F.DEFINE_string("content", None, "Content image: a file or a photo's name.")
_STYLE = F.DEFINE_string("style", None, "Style image: a file or a photo's name.")
_OUT = F.DEFINE_string("out", "stylized.png", "Output PNG.")
_SIZE = F.DEFINE_integer("size", 256, "Shorter side of the output, in pixels.")
_SQUARE = F.DEFINE_bool("square", False, "Centre-crop the content to size x size.")
_LIST = F.DEFINE_bool("list_images", False, "Print the photos' names and exit.")
_WORKDIR = F.DEFINE_string("workdir", None, "A trained feed-forward (style_adain) run.")
_ALPHA = F.DEFINE_float("alpha", 1.0, "Feed-forward: the style's share, 0 (content) to 1.")
_FEATURES = F.DEFINE_string("features", "style_cnn", "Feature network: style_cnn | vgg19.")
_WEIGHTS = F.DEFINE_string("weights", None, "vgg19's weights: torchvision .pth or Keras .h5.")
_STEPS = F.DEFINE_integer("steps", 300, "Optimisation steps (per scale).")
_OPTIMIZER = F.DEFINE_enum("optimizer", "lbfgs", ["lbfgs", "adam"], "Optimiser.")
_LR = F.DEFINE_float("learning_rate", 0.05, "Adam's learning rate.")
_INIT = F.DEFINE_enum("init", "content", ["content", "style", "noise"], "Starting picture.")
_CONTENT_W = F.DEFINE_float("content_weight", 1.0, "Weight of the content loss.")
_STYLE_W = F.DEFINE_float("style_weight", None, "Weight of the style loss (default: the "
                          "network's, style_cnn 10, vgg19 1000).")
_TV_W = F.DEFINE_float("tv_weight", 0.0, "Weight of the total-variation loss.")
_STRENGTH = F.DEFINE_float("strength", 1.0, "Style strength: multiplies --style_weight.")
_CONTENT_LAYERS = F.DEFINE_list("content_layers", None, "Content layers (default: the "
                                "network's).")
_STYLE_LAYERS = F.DEFINE_list("style_layers", None, "Style layers (default: the network's).")
_LAYER_WEIGHTS = F.DEFINE_list("style_layer_weights", None, "One weight per style layer.")
_PRESERVE = F.DEFINE_bool("preserve_color", False, "Transfer on luminance; keep the content's "
                          "colours.")
_SCALES = F.DEFINE_list("scales", None, "Coarse to fine: shorter sides, e.g. 128,256 (the "
                        "last replaces --size).")
_SEED = F.DEFINE_integer("seed", 0, "Seed of --init noise.")
_HISTORY = F.DEFINE_string("history", None, "Also write the loss history here (JSON).")


def _ints(values: list[str] | None, flag: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in values or ())
    except ValueError:
        raise RequestError(f"--{flag} takes whole numbers, got {','.join(values)}") from None


def _floats(values: list[str] | None, flag: str) -> tuple[float, ...] | None:
    try:
        return tuple(float(v) for v in values) if values else None
    except ValueError:
        raise RequestError(f"--{flag} takes numbers, got {','.join(values)}") from None


def _check_out(out: Path) -> None:
    if out.suffix.lower() != ".png":
        raise RequestError(f"--out must end in .png, got {out}")
    if not out.parent.is_dir():
        raise RequestError(f"--out's folder does not exist: {out.parent}")


def _write_png(out: Path, image) -> None:
    import numpy as np
    from PIL import Image

    pixels = np.asarray(np.clip(np.asarray(image) * 255.0 + 0.5, 0, 255), np.uint8)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".png")
    os.close(fd)
    try:
        Image.fromarray(pixels).save(tmp)
        os.replace(tmp, out)
    finally:
        Path(tmp).unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from style import images

    if _LIST.value:
        print("\n".join(images.available_names()))
        return
    if not _CONTENT.value or not _STYLE.value:
        raise RequestError("--content and --style are both needed (a file or a photo's name: "
                           "--list_images)")
    out = Path(_OUT.value)
    _check_out(out)
    scales = _ints(_SCALES.value, "scales")
    size = scales[-1] if scales else _SIZE.value
    if _WORKDIR.value and (_FEATURES.value != "style_cnn" or _WEIGHTS.value):
        raise RequestError("--workdir applies its trained network: --features and --weights "
                           "are for optimisation (without --workdir)")
    options = None if _WORKDIR.value else _options(scales)
    content, content_note = images.load_image(_CONTENT.value, size, square=_SQUARE.value)
    style, style_note = images.load_image(_STYLE.value, size)
    for note in (content_note, style_note):
        if note:
            logging.info("Note: %s", note)
    if options is None:
        from training.stylize import load as load_stylizer

        stylizer = load_stylizer(_WORKDIR.value)
        image = stylizer(content, style, alpha=_ALPHA.value)
        _write_png(out, image)
        logging.info("Wrote %s (%dx%d, feed-forward, alpha %g)", out, image.shape[1],
                     image.shape[0], _ALPHA.value)
        return
    image, history = _optimise(content, style, options)
    _write_png(out, image)
    if _HISTORY.value:
        Path(_HISTORY.value).write_text(json.dumps([r._asdict() for r in history], indent=1))
    first, last = history[0], history[-1]
    logging.info("Wrote %s (%dx%d): style loss %.4g -> %.4g (%.1fx lower), content loss "
                 "%.4g", out, image.shape[1], image.shape[0], first.style, last.style,
                 first.style / max(last.style, 1e-30), last.content)


def _options(scales: tuple[int, ...]):
    """The optimisation's options from the flags, checked (RequestError) before any image
    or network is read."""
    from style import feature_nets
    from style.gatys import GatysOptions

    entry = feature_nets.get(_FEATURES.value)
    options = GatysOptions(
        content_weight=_CONTENT_W.value, tv_weight=_TV_W.value,
        style_weight=entry.style_weight if _STYLE_W.value is None else _STYLE_W.value,
        content_layers=tuple(_CONTENT_LAYERS.value or entry.content_layers),
        style_layers=tuple(_STYLE_LAYERS.value or entry.style_layers),
        style_layer_weights=_floats(_LAYER_WEIGHTS.value, "style_layer_weights"),
        optimizer=_OPTIMIZER.value, learning_rate=_LR.value, init=_INIT.value,
        seed=_SEED.value, steps=_STEPS.value, strength=_STRENGTH.value,
        preserve_color=_PRESERVE.value, scales=scales)
    entry.check_layers(options.layers)
    if entry.needs_weights and not _WEIGHTS.value:
        feature_nets.load(entry.name, None)  # the RequestError that names the files
    return options


def _optimise(content, style, options):
    import progress
    from style import feature_nets
    from style.gatys import style_transfer

    entry, net = feature_nets.load(_FEATURES.value, _WEIGHTS.value)
    total = options.steps * max(1, len(options.scales))
    with progress.bar(total=total, desc=f"stylize ({entry.name})", unit="step") as bar:

        def report(step: int, losses: dict[str, float]) -> None:
            bar.update(step - bar.n)
            bar.set_postfix(style=f"{losses['style']:.3g}", content=f"{losses['content']:.3g}")

        result = style_transfer(content, style, lambda x: net(x, options.layers),
                                entry.layer_names, options, callback=report)
    return result.image, result.history


def run() -> None:
    """The entry point (`python stylize.py`, the `scoregen-stylize` script)."""
    cli.run(main)


if __name__ == "__main__":
    run()
