"""`SampleRequest`: everything one asks of a sampler, validated once when it is built.

The fields are sample.py's flags (the messages name them so): a bad request is a one-line
RequestError at construction, before any checkpoint is read or anything compiled. What a
family cannot do is its own check (`family.accepts(request)`); this module knows no family.
"""

import dataclasses
import math
from typing import Any

import numpy as np

from errors import RequestError

TASKS = ("sample", "inpaint", "colorize", "sdedit")


def _is_int(value) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | np.integer)


def _check_scale(flag: str, value) -> None:
    if value is not None and not (math.isfinite(float(value)) and float(value) >= 0):
        raise RequestError(f"{flag} must be >= 0, got {float(value)}")


@dataclasses.dataclass(frozen=True)
class SampleRequest:
    """`num_samples` drawn `batch_size` per sampler call.

    - `sampler`, `steps`: the sampler's name and steps (None: the config's);
    - `seed`: batch i draws with fold_in(PRNGKey(seed), i); `use_ema`: the EMA weights;
    - `labels`: the class of every sample (None: 0..K-1 in turn for conditional models);
    - `guidance_scale`: classifier-free guidance weight (None: the config's);
    - `classifier_scale` / `autoguidance_scale`: None unless a classifier / an autoguide
      guides the model (their weights);
    - `task`: 'sample' | 'inpaint' (`image` and `mask`) | 'colorize' (`image`, gray) |
      'sdedit' (`image`, `edit_strength` in (0, 1]); `prompts`: a text-conditional
      model's prompts, sample i drawn for prompts[i % len(prompts)]; `image` (H, W, C) and `mask`
      (H, W, 1|C), 1 = known, numpy in the model's data space. They are not part of the
      request's equality, hash or record.
    """

    num_samples: int
    batch_size: int = 256
    sampler: str | None = None
    steps: int | None = None
    seed: int = 0
    use_ema: bool = True
    labels: int | None = None
    guidance_scale: float | None = None
    classifier_scale: float | None = None
    autoguidance_scale: float | None = None
    task: str = "sample"
    edit_strength: float | None = None
    prompts: tuple[str, ...] | None = None
    image: np.ndarray | None = dataclasses.field(default=None, compare=False, hash=False,
                                                 repr=False)
    mask: np.ndarray | None = dataclasses.field(default=None, compare=False, hash=False,
                                                repr=False)

    def __post_init__(self):
        if not _is_int(self.num_samples) or self.num_samples <= 0:
            raise RequestError(f"--num_samples must be positive, got {self.num_samples}")
        if not _is_int(self.batch_size) or self.batch_size <= 0:
            raise RequestError(f"--batch_size must be positive, got {self.batch_size}")
        if self.steps is not None:
            if not _is_int(self.steps):
                raise RequestError(f"--steps must be a positive int, got {self.steps!r}")
            if self.steps <= 0:
                raise RequestError(f"--steps must be positive, got {self.steps}")
        if self.labels is not None and not _is_int(self.labels):
            raise RequestError(f"--class_label must be an int, got {self.labels!r}")
        for flag in ("guidance_scale", "classifier_scale", "autoguidance_scale"):
            _check_scale(f"--{flag}", getattr(self, flag))
        if self.task not in TASKS:
            raise RequestError(f"unknown sampling task {self.task!r}; known: {', '.join(TASKS)}")
        strength = self.edit_strength
        if strength is not None and self.task != "sdedit":
            raise RequestError("--edit_strength goes with SDEdit only")
        if self.task == "sdedit" and (strength is None or not 0.0 < float(strength) <= 1.0):
            raise RequestError(f"--edit_strength must lie in (0, 1], got {strength}")
        if (self.task == "sample") != (self.image is None):
            raise RequestError(f"task {self.task!r} " + ("takes no image" if self.task == "sample"
                                                       else "needs an image"))
        if self.prompts is not None:
            if isinstance(self.prompts, str) or not all(isinstance(p, str)
                                                        for p in self.prompts):
                raise RequestError(f"prompts must be a sequence of strings, got {self.prompts!r}")
            if not self.prompts:
                raise RequestError("no prompts given (an empty --prompts_file?)")
            if self.labels is not None:
                raise RequestError("--class_label and --prompt exclude each other: a "
                                   "text-conditional model is steered by its prompts")
            object.__setattr__(self, "prompts", tuple(self.prompts))
        if (self.task == "inpaint") == (self.mask is None):
            raise RequestError("a mask goes with inpainting" if self.task != "inpaint"
                               else "inpainting needs a mask")

    @property
    def batch(self) -> int:
        """Samples per sampler call."""
        return min(self.batch_size, self.num_samples)

    def with_batch(self, num: int) -> "SampleRequest":
        """This request for one call of `num` samples (a padded batch)."""
        return dataclasses.replace(self, num_samples=num, batch_size=num)

    def record(self) -> dict[str, Any]:
        """What the samples file stores of the request (numpy scalars for an .npz)."""
        out = {"seed": np.int64(self.seed), "task": np.str_(self.task),
               "use_ema": np.bool_(self.use_ema)}
        if self.steps is not None:
            out["steps"] = np.int64(self.steps)
        for name in ("classifier_scale", "autoguidance_scale", "edit_strength"):
            if getattr(self, name) is not None:
                out[name] = np.float64(getattr(self, name))
        return out
