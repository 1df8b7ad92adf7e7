"""The notebook API: a trained run in three lines.

    import scoregen
    model = scoregen.load("runs/digits_vp")                       # WORKDIR/config.json
    images = model.sample(64, sampler="dpm_solver_pp", steps=20)  # uint8 (64, 8, 8, 1)
    nats = model.log_likelihood(images)                           # (64,) log p, in nats

`load` reads the run's config and restores its newest checkpoint (the EMA weights sample)
on every local device, as `sample.py --workdir` does; `Model.sample` takes the options of
`sample.py` as keyword arguments, checked in one place (`SampleRequest`); the likelihood
is the probability-flow ODE's for a diffusion model and the importance-weighted bound for
a VAE, both of the 8-bit images. Bad input raises `errors.UserError` with one line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from diffusion.likelihood import bits_per_dim as density_bits_per_dim
from errors import UserError
from evaluation import bpd
from training import inference, run_config
from training.families.base import BOUNDS, LIKELIHOOD
from training.families.request import SampleRequest

__all__ = ["Model", "load"]

_REQUEST_OPTIONS = frozenset(f.name for f in dataclasses.fields(SampleRequest)) - {"num_samples"}


class Model:
    """A trained run: `config`, `family`, `state` (placed on the run's mesh) and `step`."""

    def __init__(self, config: ml_collections.ConfigDict, family: Any, state: Any,
                 step: int, workdir: str):
        self.config, self.family, self.state, self.step = config, family, state, step
        self.workdir = workdir
        self._likelihood = None

    def __repr__(self) -> str:
        return (f"scoregen.Model({self.workdir!r}, family={self.config.model.family!r}, "
                f"step={self.step}, data_shape={self.family.data_shape})")

    def sample(self, num_samples: int, **options: Any) -> np.ndarray:
        """`num_samples` samples: uint8 images (N, H, W, C), or float32 points for 2-D
        data. `options` are `SampleRequest`'s fields (`sampler`, `steps`, `seed`,
        `batch_size`, `labels`, `guidance_scale`, `use_ema`, `task`, `image`, `mask`,
        `edit_strength`, ...); the family refuses in one line what it cannot do."""
        unknown = sorted(set(options) - _REQUEST_OPTIONS)
        if unknown:
            raise UserError(f"sample() takes no option {unknown[0]!r}; it takes "
                            f"{', '.join(sorted(_REQUEST_OPTIONS))}")
        options.setdefault("batch_size", min(num_samples,
                                             int(self.config.eval.batch_size)))
        request = SampleRequest(num_samples, **options)
        self.family.accepts(request)
        samples, _ = inference.generate(self.family, self.state, request)
        return samples

    def log_likelihood(self, images: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """(N,) log-likelihood in nats of 8-bit `images` (N, H, W, C) (uint8, as `sample`
        and the datasets give them): a lower bound on log P(images). A diffusion model
        scores them uniformly dequantized (noise from `seed`) by its probability-flow
        ODE (`config.eval.bpd_*`), a VAE by its importance-weighted bound."""
        kind = self._likelihood_kind()
        pixels = self._checked_images(images)
        batch = int(self.config.eval.batch_size)
        rng = np.random.default_rng(seed)
        params = self.family.sample_params(self.state)
        # Each batch split over the devices the model is placed on (evaluate.py's way).
        fn = bpd.split_over_devices(self._likelihood_fn(kind), params)
        key = jax.random.PRNGKey(seed)
        out = []
        for i in range(0, len(pixels), batch):
            k = pixels[i:i + batch].astype(np.float32)
            if kind == LIKELIHOOD:
                x = (k + rng.random(k.shape, np.float32)) / 256.0
                logp, _ = fn(jax.random.fold_in(key, i), self._centre(x))
                # The density of the data space as one of k + u on [0, 256)^D: evaluate.py's.
                logp = -np.asarray(density_bits_per_dim(logp, self.family.data_shape,
                                                        centered=self.config.data.centered),
                                   np.float64) * k[0].size * math.log(2.0)
            else:
                logp = np.asarray(fn(jax.random.fold_in(key, i), self._centre(k / 255.0))["iwae"],
                                  np.float64)
            out.append(logp)
        return np.concatenate(out)

    def bits_per_dim(self, images: np.ndarray, *, seed: int = 0) -> np.ndarray:
        """(N,) bits per dimension of `images`: -log_likelihood / (D ln 2)."""
        return -self.log_likelihood(images, seed=seed) / (
            math.prod(self.family.data_shape) * math.log(2.0))

    # -- the edge's checks ------------------------------------------------------------

    def _likelihood_kind(self) -> str:
        capabilities = self.family.capabilities
        if not self.family.is_image_data:
            raise UserError("log_likelihood scores 8-bit images; this model draws 2-D points")
        for kind in (LIKELIHOOD, BOUNDS):
            if kind in capabilities:
                return kind
        raise UserError(self.family.refusal([(LIKELIHOOD, "log_likelihood")]))

    def _likelihood_fn(self, kind: str):
        if self._likelihood is None:
            if kind == BOUNDS:
                self._likelihood = self.family.make_bounds()
            else:
                from evaluation.bpd import likelihood_options

                self._likelihood = self.family.make_log_likelihood(
                    **likelihood_options(self.config))
        return self._likelihood

    def _checked_images(self, images: Any) -> np.ndarray:
        images = np.asarray(images)
        shape = tuple(self.family.data_shape)
        if images.ndim != len(shape) + 1 or images.shape[1:] != shape or not len(images):
            raise UserError(f"log_likelihood takes images of shape (N, "
                            f"{', '.join(map(str, shape))}), got {images.shape}")
        if images.dtype != np.uint8:
            raise UserError(f"log_likelihood takes uint8 images (0..255), got {images.dtype}")
        return images

    def _centre(self, x: np.ndarray) -> np.ndarray:
        return 2.0 * x - 1.0 if self.config.data.centered else x


def load(workdir: str | os.PathLike, *, step: int | None = None, devices=None) -> Model:
    """The run in `workdir`: its config.json and its newest checkpoint (or the one at
    `step`), placed on the run's mesh over `devices` (default: all). UserError (one
    line) for a workdir without a config or checkpoints."""
    workdir = os.fspath(workdir)
    config = run_config.read_run_config(workdir)
    if config is None:
        raise UserError(f"no {run_config.CONFIG_FILE} in {workdir}: not a training run's "
                        "workdir (train.py writes one)")
    family, state, step = inference.restore_latest(config, workdir, step, devices=devices)
    return Model(config, family, state, step, workdir)
