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

from training.errors import UserError
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
    "gan": ("gan", "model.latent_dim", "model.d_nf", "model.spectral_norm"),
    "vae": ("vae", "model.latent_channels"),
    "latent_diffusion": ("latent",),
    "noise_classifier": ("classifier",),
}
# Settings that some families take and the others refuse.
_SHARED_SETTINGS = {
    "model.self_condition_clusters": ("gan", "diffusion", "latent_diffusion"),
    "model.cluster_draws": ("gan", "diffusion", "latent_diffusion"),
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


def check_family_settings(config: ml_collections.ConfigDict) -> None:
    """UserError if the config sets another family's settings or names its network."""
    from configs.default import get_default_config

    family = config.model.family
    owner = _OWN_NETWORKS.get(config.model.name)
    if owner is not None and owner != family:
        raise UserError(f"model.name={config.model.name!r} is a {owner.upper()} network; this "
                        f"run is model.family={family!r} (set model.family={owner!r})")
    defaults = get_default_config()
    for other, keys in _OWN_SETTINGS.items():
        if other == family:
            continue
        for key in keys:
            try:
                value = _flat(_get(config, key), key)
                default = _flat(_get(defaults, key), key)
            except KeyError:
                continue
            changed = [k for k in value if value[k] != default.get(k)]
            if changed:
                raise UserError(f"config.{changed[0]} is a setting of model.family={other!r}; "
                                f"this run is model.family={family!r}")
    for key, families in _SHARED_SETTINGS.items():
        if family not in families and _get(config, key) != _get(defaults, key):
            raise UserError(f"config.{key} is a setting of model.family "
                            f"{', '.join(map(repr, families))} only; this run is "
                            f"model.family={family!r}")


def get_family(config: ml_collections.ConfigDict):
    """Builds the family named by `config.model.family`."""
    name = config.model.family
    if name not in FAMILIES:
        raise UserError(f"config.model.family={name!r} is not one of {sorted(FAMILIES)}")
    check_family_settings(config)
    return FAMILIES[name](config)
