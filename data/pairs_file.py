"""The reflow pairs file: an .npz as reflow.py writes it (`save_pairs`) and the reflow family
reads it (`load_pairs`): `noise` and `image`, float32 (N, H, W, C) in the model's data space
(the noise a deterministic sampler started from and the image it ended at), and how they
were drawn. Checked on reading so that a wrong key, shape, count or value is one line
naming the problem. In data/ because a training run reads it as its data."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from data.samples_file import read_npz
from errors import UserError

# The provenance reflow.py records: which run drew the pairs, on which SDE, how.
PROVENANCE = ("teacher_workdir", "teacher_step", "sde", "sampler", "steps", "nfe", "seed")


@dataclasses.dataclass(frozen=True)
class Pairs:
    """`noise` and `image` (N, H, W, C) float32, and `provenance` (PROVENANCE's keys)."""

    noise: np.ndarray
    image: np.ndarray
    provenance: Mapping[str, Any]

    def __len__(self) -> int:
        return len(self.noise)


def save_pairs(path: str | os.PathLike, noise: np.ndarray, image: np.ndarray,
               provenance: Mapping[str, Any]) -> None:
    """Writes the pairs and their provenance to the .npz `path`, atomically (a temporary
    file beside it, renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, noise=np.asarray(noise, np.float32), image=np.asarray(image, np.float32),
             **{key: np.asarray(provenance[key]) for key in PROVENANCE})
    tmp.replace(path)


def load_pairs(path: str | os.PathLike, shape: tuple[int, ...], sde: str) -> Pairs:
    """Reads and checks a pairs .npz for a model of data `shape` on SDE `sde` (its
    `training.sde`); UserError (one line) for a missing, damaged or mismatched file."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"reflow.pairs={str(path)!r} does not exist: draw the pairs first "
                        "(python reflow.py --workdir RUN --out PAIRS.npz)")
    arrays = read_npz(path, "reflow pairs as reflow.py writes them")
    missing = [key for key in ("noise", "image", *PROVENANCE) if key not in arrays]
    if missing:
        raise UserError(f"{path} is not a reflow pairs file: it has no {missing[0]!r} "
                        f"(it holds {', '.join(sorted(arrays)) or 'nothing'})")
    noise, image = arrays["noise"], arrays["image"]
    for name, value in (("noise", noise), ("image", image)):
        if value.ndim < 2 or tuple(value.shape[1:]) != tuple(shape):
            raise UserError(f"{path}: {name} has shape {value.shape}; this model's data are "
                            f"(N, {', '.join(map(str, shape))})")
    if len(noise) != len(image) or not len(noise):
        raise UserError(f"{path}: {len(noise)} noise draws for {len(image)} images; "
                        "expected the same number, at least one")
    provenance = {key: arrays[key].item() for key in PROVENANCE}
    if provenance["sde"] != sde:
        raise UserError(f"{path} was drawn by a model on training.sde="
                        f"{provenance['sde']!r}; this run is training.sde={sde!r} (the pairs' "
                        "noise is that SDE's prior)")
    for name, value in (("noise", noise), ("image", image)):
        if not np.isfinite(value).all():
            raise UserError(f"{path}: {int(np.sum(~np.isfinite(value)))} {name} values are "
                            "not finite")
    return Pairs(noise.astype(np.float32), image.astype(np.float32), provenance)
