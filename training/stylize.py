"""A trained feed-forward style transfer run (`model.family='style_adain'`), restored and
ready to stylize any content image with any style image in one forward pass:

    from style import load_image
    from training import stylize

    stylizer = stylize.load("runs/style_adain")          # WORKDIR/config.json, newest step
    content, _ = load_image("chelsea", 256)
    painting, _ = load_image("path/to/painting.jpg", 256)
    image = stylizer(content, painting, alpha=0.8)       # float32 (H, W, 3) in [0, 1]

What a `stylize.py --workdir W` CLI needs: `load` (one-line UserError for a workdir without
a config or checkpoints, or of another family) and the returned `Stylizer`.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import ml_collections
import numpy as np

from errors import UserError
from training import checkpoint, inference, run_config
from training.families.base import STYLIZE


class Stylizer:
    """`stylizer(content, style, alpha=None) -> float32 images in [0, 1]` of a restored
    run: `config`, `family`, `params` (`family.sample_params(state)`) and `step`."""

    def __init__(self, config: ml_collections.ConfigDict, family: Any, params: Any, step: int):
        self.config, self.family, self.params, self.step = config, family, params, step
        self._stylize = family.make_stylizer()

    def __repr__(self) -> str:
        return (f"Stylizer(encoder={self.config.style.encoder!r}, step={self.step}, "
                f"alpha={self.config.style.alpha})")

    def __call__(self, content: Any, style: Any, alpha: float | None = None) -> np.ndarray:
        """`content` in the style of `style`: RGB floats in [0, 1] (uint8 is read as
        0..255), (H, W, 3) or (N, H, W, 3), any size (a style for all content images or
        one each); `alpha` in [0, 1] (default `style.alpha`: 1 is all style, 0 the
        decoder of the content's own features). Float32 of the content's shape in [0, 1]."""
        alpha = float(self.config.style.alpha if alpha is None else alpha)
        if not 0.0 <= alpha <= 1.0:
            raise UserError(f"alpha must lie in [0, 1], got {alpha}")
        content, style = _unit(content, "content"), _unit(style, "style")
        out = self._stylize(self.params, content, style, np.float32(alpha))
        return np.asarray(jax.device_get(out))


def _unit(images: Any, what: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise UserError(f"the {what} image must be float in [0, 1] or uint8, got {images.dtype}")
    if images.ndim not in (3, 4) or images.shape[-1] != 3 or min(images.shape[-3:-1]) < 1:
        raise UserError(f"the {what} image must be RGB (H, W, 3) or (N, H, W, 3), got "
                        f"{images.shape}")
    return np.clip(images.astype(np.float32), 0.0, 1.0)


def load(workdir: str | os.PathLike, *, step: int | None = None,
         config: ml_collections.ConfigDict | None = None, devices=None) -> Stylizer:
    """The style transfer run in `workdir`: its config (WORKDIR/config.json unless
    `config`) and its newest checkpoint (or the one at `step`), on `devices` (default:
    all). UserError (one line) for a workdir without a config or checkpoints, or a run
    that is not a style transfer model."""
    workdir = os.fspath(workdir)
    config = run_config.load_run_config(workdir, config)
    checkpoint.check_has_checkpoints(workdir)  # before the family reads any weights
    family = inference.load_family(config, workdir, step)
    if STYLIZE not in family.capabilities:
        raise UserError(f"{workdir} holds a model.family={config.model.family!r} run, not a "
                        "style transfer model (model.family='style_adain')")
    family, state, step = inference.restore_latest(config, workdir, step=step,
                                                   devices=devices, family=family)
    return Stylizer(config, family, family.sample_params(state), step)
