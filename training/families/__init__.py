"""Model families: what the training loop knows of diffusion, GANs and VAEs.

A family is built from the config and exposes `init_state(key) -> TrainState`,
`train_step(state, batch) -> (state, metrics)`, `eval_step(state, batch, key) -> metrics`,
`make_sampler(num, ...) -> sample(params, key) -> (images in [0, 1], nfe)` and
`sample_params(state)`, and optionally `prepare_training()` (reads inputs only training
needs, raising UserError before the loop writes anything). The loop jits the steps; the
family keeps them pure.
`noise_classifier` trains a classifier p(y | x_t, t) for classifier guidance, or a
real-vs-generated discriminator for discriminator guidance: its `make_sampler` refuses, and
it exposes `guide(score_fn, params, labels, scale)`.
`gan` and `vae` draw a sample in one generator call; `latent_diffusion` is a diffusion
model in the latent space of a trained VAE.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

import networks
from errors import UserError
from training import accumulate
from training.families.diffusion import DiffusionFamily
from training.families.gan import GANFamily
from training.families.latent_diffusion import LatentDiffusionFamily
from training.families.noise_classifier import NoiseClassifierFamily
from training.families.vae import VAEFamily

FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {
    "diffusion": DiffusionFamily,
    "gan": GANFamily,
    "latent_diffusion": LatentDiffusionFamily,
    "noise_classifier": NoiseClassifierFamily,
    "vae": VAEFamily,
}

# Settings that only one family reads: set for another family, they are a mistake (a
# discriminator asked of a diffusion run), not something to ignore.
_OWN_SETTINGS = {
    "gan": ("gan", "model.latent_dim", "model.d_nf", "model.spectral_norm",
            "model.convs_per_stage"),
    "vae": ("vae", "model.latent_channels"),
    "latent_diffusion": ("latent",),
    "noise_classifier": ("classifier",),
}
# The families built on a noise-conditional network: the SDE, its objective, the
# samplers and the score networks' settings are theirs. A GAN or a VAE ignores them, so
# setting one there is a mistake to name, not a silent no-op.
_SCORE_FAMILIES = ("diffusion", "latent_diffusion", "noise_classifier")
_SCORE_SETTINGS = (
    "training.sde", "training.objective", "training.P_mean", "training.P_std",
    "training.continuous", "training.likelihood_weighting", "training.reduce_mean",
    "training.class_dropout", "sampling",
    "model.beta_min", "model.beta_max", "model.sigma_min", "model.sigma_max",
    "model.num_scales", "model.preconditioning", "model.sigma_data",
    "model.attn_resolutions", "model.dropout", "model.resamp_with_conv", "model.skip_rescale",
    "model.resblock_type", "model.embedding_type", "model.fourier_scale", "model.init_scale",
    "model.fir", "model.fir_kernel", "model.progressive", "model.progressive_input",
    "model.hidden", "model.num_layers",
)
# Settings that some families take and the others refuse.
_SHARED_SETTINGS = {
    "model.self_condition_clusters": ("gan", "diffusion", "latent_diffusion"),
    "model.cluster_draws": ("gan", "diffusion", "latent_diffusion"),
    # The VAE's encoder and decoder are built from the U-Net's blocks, and it keeps an EMA
    # by rate; the GAN's networks have their own depth and its EMA a half-life in images.
    "model.ch_mult": (*_SCORE_FAMILIES, "vae"),
    "model.num_res_blocks": (*_SCORE_FAMILIES, "vae"),
    "model.ema_rate": (*_SCORE_FAMILIES, "vae"),
    **{key: _SCORE_FAMILIES for key in _SCORE_SETTINGS},
}
# Network names that belong to one family, for a clearer refusal than "unknown network".
_OWN_NETWORKS = {"dcgan": "gan", "resnet": "gan", "conv_vae": "vae"}


def _get(config: ml_collections.ConfigDict, dotted: str):
    node = config
    for part in dotted.split("."):
        node = node[part]
    return node


def _flat(node, prefix: str) -> dict[str, Any]:
    if isinstance(node, ml_collections.ConfigDict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}"))
        return out
    return {prefix: node}


def _first_changed(config, defaults, key: str) -> str | None:
    """The first setting under `key` whose value differs from the defaults (None: none, or
    a key the config does not have)."""
    try:
        value, default = _flat(_get(config, key), key), _flat(_get(defaults, key), key)
    except KeyError:
        return None
    return next((k for k in value if value[k] != default.get(k)), None)


def _check_precision_settings(config: ml_collections.ConfigDict) -> None:
    """UserError for a `model.dtype` / `model.remat` no network takes, or `remat='block'`
    on a network without residual blocks (nothing to rematerialise: refused, not ignored)."""
    dtype = config.model.get("dtype", "float32")
    if dtype not in networks.DTYPES:
        raise UserError(f"model.dtype={dtype!r} is not one of {tuple(networks.DTYPES)}")
    remat = config.model.get("remat", "none")
    if remat not in networks.REMAT_MODES:
        raise UserError(f"model.remat={remat!r} is not one of {networks.REMAT_MODES}")
    if remat != "none" and config.model.name not in networks.REMAT_NETWORKS:
        raise UserError(f"model.remat={remat!r} needs a network with residual blocks; "
                        f"model.name={config.model.name!r} has none "
                        f"({', '.join(sorted(networks.REMAT_NETWORKS))} have)")


def check_family_settings(config: ml_collections.ConfigDict) -> None:
    """UserError if the config sets another family's settings or names its network, asks
    for a compute dtype / rematerialisation its network cannot have, or a batch that does
    not cut into its gradient-accumulation micro-batches."""
    from configs.default import get_default_config

    family = config.model.family
    owner = _OWN_NETWORKS.get(config.model.name)
    if owner is not None and owner != family:
        raise UserError(f"model.name={config.model.name!r} is a {owner.upper()} network; this "
                        f"run is model.family={family!r} (set model.family={owner!r})")
    _check_precision_settings(config)
    accumulate.check_accumulation(config.training.batch_size,
                                  config.training.grad_accum_steps)
    defaults = get_default_config()
    for other, keys in _OWN_SETTINGS.items():
        if other == family:
            continue
        for key in keys:
            if changed := _first_changed(config, defaults, key):
                raise UserError(f"config.{changed} is a setting of model.family={other!r}; "
                                f"this run is model.family={family!r}")
    for key, families in _SHARED_SETTINGS.items():
        if family not in families and (changed := _first_changed(config, defaults, key)):
            raise UserError(f"config.{changed} is a setting of model.family "
                            f"{', '.join(map(repr, families))} only; this run is "
                            f"model.family={family!r}")


def get_family(config: ml_collections.ConfigDict):
    """Builds the family named by `config.model.family`."""
    name = config.model.family
    if name not in FAMILIES:
        raise UserError(f"config.model.family={name!r} is not one of {sorted(FAMILIES)}")
    check_family_settings(config)
    return FAMILIES[name](config)
