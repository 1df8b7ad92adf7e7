"""Latent diffusion (Rombach et al., 2022): a score-SDE diffusion model trained in the
latent space of a trained VAE, the way Stable Diffusion works.

The VAE (`latent.vae_config`, `latent.vae_workdir`) is restored and frozen. Training
images are encoded to a posterior sample z ~ q(z | x), scaled by `latent_scale`, one over
the standard deviation of the posterior means over the whole training split (computed
when the run starts and stored in its checkpoints with the VAE's weights, so the diffusion
model sees unit-variance latents whatever the VAE); sampling runs any sampler in the
latent space and decodes the result with the VAE's decoder mean. Everything else is the
diffusion family's.
"""

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

import configs
from data import pipeline
from errors import UserError
from training import checkpoint
from training.families import base, clusters, common
from training.families.diffusion import DiffusionFamily
from training.families.vae import VAEFamily
from training.state import TrainState

# What the VAE must share with the latent model's data.
_SHARED_DATA = ("dataset", "image_size", "num_channels", "centered")


def _vae_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """The VAE's config (`latent.vae_config`), checked against the latent model's data."""
    cfg = config.latent
    if not cfg.vae_config or not cfg.vae_workdir:
        raise UserError("model.family='latent_diffusion' needs latent.vae_config and "
                        "latent.vae_workdir: a VAE trained with train.py first")
    try:
        vae_config = configs.load(cfg.vae_config)
    except ValueError as err:
        raise UserError(f"latent.vae_config: {err}") from err
    if vae_config.model.family != "vae":
        raise UserError(f"latent.vae_config is a model.family={vae_config.model.family!r} "
                        "config, not a VAE")
    diffs = [f"data.{k}: {vae_config.data[k]!r} (VAE) vs {config.data[k]!r}"
             for k in _SHARED_DATA if vae_config.data[k] != config.data[k]]
    if diffs:
        raise UserError("the VAE was trained on other data: " + "; ".join(diffs))
    return vae_config


class LatentDiffusionFamily(DiffusionFamily):
    """`model.family='latent_diffusion'`: `vae`, `vae_params`, `vae_step`, `image_shape`
    (the data), `data_shape` (the latents) and `latent_scale`.

    Its statistics hold the frozen VAE (`vae_params`, `vae_step`), `latent_scale` and the
    clusters of a self-conditioned model: a run's checkpoints carry the VAE it was trained
    with, so the VAE's workdir is read once, when the run starts, and never again.
    """

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics`: what `compute_statistics(config)` returned."""
        statistics = dict(statistics or {})
        missing = {"vae_params", "vae_step", "latent_scale"} - set(statistics)
        if missing:
            raise ValueError(f"a latent diffusion model is built from its statistics; "
                             f"{sorted(missing)} missing (LatentDiffusionFamily."
                             "compute_statistics reads them)")
        self.vae = VAEFamily(_vae_config(config))
        self.vae_params = jax.eval_shape(self.vae.init_params, jax.random.PRNGKey(0))
        nnx.replace_by_pure_dict(self.vae_params,  # in place
                                 jax.tree.map(jnp.asarray, statistics["vae_params"]))
        self.vae_step = int(statistics["vae_step"])
        self.latent_scale = float(statistics["latent_scale"])
        self.image_shape = self.vae.data_shape
        super().__init__(config, statistics)

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """Restores the VAE (`latent.vae_workdir`, its newest checkpoint unless
        `latent.vae_step`), and encodes the training split: `latent_scale` is one over the
        standard deviation of the posterior means, and a self-conditioned model clusters
        the scaled means, the space it lives in."""
        cfg = config.latent
        vae_config = _vae_config(config)
        checkpoint.check_has_checkpoints(cfg.vae_workdir)
        vae = VAEFamily(vae_config)
        vae_state, vae_step = checkpoint.restore_run(vae_config, cfg.vae_workdir, vae,
                                                     cfg.vae_step)
        vae_params = vae.sample_params(vae_state)
        images = pipeline.read_split(config.data, "train")["image"].astype(np.float32) / 255.0
        if config.data.centered:
            images = 2.0 * images - 1.0
        encode = jax.jit(lambda x: vae.encode_fn(vae_params)(x)[0])
        means = np.concatenate([np.asarray(encode(images[i:i + 512]))
                                for i in range(0, len(images), 512)])
        std = float(means.std())
        if not np.isfinite(std) or std <= 0:
            raise UserError(f"the VAE's latents of the training split have std {std}: "
                            "the VAE cannot serve latent diffusion")
        logging.info("latent scale 1/%.4f from %d training images (VAE step %d)", std,
                     len(images), vae_step)
        statistics = {
            "vae_params": jax.tree.map(np.asarray, nnx.to_pure_dict(vae_params)),
            "vae_step": np.int64(vae_step),
            "latent_scale": np.float32(1.0 / std),
        }
        found = clusters.compute(config, num_classes=int(config.model.num_classes),
                                 training_data=means / std)
        if found:
            statistics["clusters"] = found
        return statistics

    # -- the diffusion family's hooks: latents instead of images ----------------------

    def _data_info(self, config: ml_collections.ConfigDict):
        info = pipeline.get_info(config.data)
        return SimpleNamespace(shape=self.vae.latent_shape, num_classes=info.num_classes)

    def _network_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        net_config = config.copy_and_resolve_references()
        height, _, channels = self.vae.latent_shape
        net_config.data.image_size = int(height)
        net_config.data.num_channels = int(channels)
        return net_config

    def encode(self, key: jax.Array, images: jax.Array) -> jax.Array:
        """Scaled posterior samples of `images` (data space): what the model is trained on."""
        mean, logvar = self.vae.encode_fn(self.vae_params)(images)
        z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(key, mean.shape, mean.dtype)
        return z * self.latent_scale

    def decode(self, latents: jax.Array) -> jax.Array:
        """Images in the data space from scaled latents."""
        return self.vae.decode(self.vae_params, latents / self.latent_scale)

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        key = jax.random.fold_in(jax.random.fold_in(state.rng, state.step), 0x1A7E)
        return super().train_step(state, {**batch, "image": self.encode(key, batch["image"])})

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict:
        latents = self.encode(jax.random.fold_in(key, 0x1A7E), batch["image"])
        return super().eval_step(state, {**batch, "image": latents}, key)

    def to_unit_range(self, x: jax.Array) -> jax.Array:
        """Sampled latents decoded to images in [0, 1]."""
        return common.to_unit_range(self.decode(x), self.config.data.centered)

    def _capabilities(self) -> frozenset[str]:
        """Plain, class-conditional and autoguided sampling: the image tasks and
        classifiers act on images, and the likelihood would be the latents'."""
        return super()._capabilities() - {base.LIKELIHOOD, base.CLASSIFIER_GUIDANCE,
                                          base.INPAINT, base.COLORIZE, base.SDEDIT}

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        if missing[0][0] == base.LIKELIHOOD:
            return ("bits/dim needs the likelihood of the images; a latent diffusion model "
                    "has the likelihood of its latents only")
        return ("latent diffusion samples (optionally class-conditionally with "
                "--guidance_scale, or autoguided); inpainting, colorization, SDEdit and "
                "classifier guidance act on images and are not supported")

    def _check_guide(self, guide, guidance: float) -> None:
        super()._check_guide(guide, guidance)
        if (guide.vae_step, guide.latent_scale) != (self.vae_step, self.latent_scale):
            raise ValueError(f"the autoguide diffuses the latents of VAE step {guide.vae_step} "
                             f"(scale {guide.latent_scale:.6g}), the model those of step "
                             f"{self.vae_step} (scale {self.latent_scale:.6g}): they must "
                             "match")
