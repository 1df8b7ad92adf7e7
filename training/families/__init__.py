"""Model families: what the training loop knows of diffusion, GANs and VAEs.

Every family satisfies `base.Family`: `config`, `data_shape`, `num_classes`,
`capabilities` (a frozenset of `base`'s names: SAMPLE, SAMPLERS, LIKELIHOOD, BOUNDS,
GUIDANCE, CLASSIFIER_GUIDANCE, AUTOGUIDANCE, INPAINT, COLORIZE, SDEDIT, GUIDE, PROMPTS,
STYLIZE),
`statistics` (what the classmethod `compute_statistics(config)` read of the data when the
run started; every checkpoint stores them), `prepare_training()` (a no-op where training
needs no extra input), `init_state(key)`,
`train_step(state, batch)`, `eval_step(state, batch, key)`, `sample_params(state,
use_ema)`, `accepts(request)` (UserError naming what a `request.SampleRequest` asks that
it cannot do), `make_sampler(request, *, classifier=None, guide=None) -> sample(params,
key, ...) -> (images in [0, 1], nfe)`, `sampler_name(request)`, `to_unit_range(x)` and
`is_image_data`. Callers test capabilities, never `hasattr`; the loop jits the steps and
the family keeps them pure.
`noise_classifier` (capability GUIDE) trains p(y | x_t, t) or a real-vs-generated
discriminator and exposes `guide(score_fn, params, labels, scale)`; it draws no samples.
`gan` and `vae` draw a sample in one generator call; `latent_diffusion` is a diffusion
model in the latent space of a trained VAE; `text_diffusion` one steered by text prompts
(capability PROMPTS; `for_request(request)` is the model of the request's prompts).
`style_adain` (capability STYLIZE) is feed-forward style transfer: it draws no samples,
`make_stylizer()` stylizes content images with style images and `snapshot_rows(params)`
gives the loop its snapshot grid. `consistency` is a consistency model, distilled from a
diffusion teacher (`distill.teacher_workdir`, read by `prepare_training`) or trained from
scratch, drawn in a few network calls (capabilities SAMPLE and SAMPLERS: `--steps` only);
`progressive_distillation` a student halving a teacher's DDIM steps (the same capabilities);
`reflow` a flow trained on the (noise, image) pairs of a trained model's ODE (reflow.py),
which samples and has its likelihood as `diffusion` does.
"""

from collections.abc import Callable
from typing import Any

import ml_collections

import networks
from configs import sections
from errors import UserError
from training import accumulate
from training.families.consistency import ConsistencyFamily
from training.families.diffusion import DiffusionFamily
from training.families.gan import GANFamily
from training.families.latent_diffusion import LatentDiffusionFamily
from training.families.noise_classifier import NoiseClassifierFamily
from training.families.progressive import ProgressiveDistillationFamily
from training.families.reflow import ReflowFamily
from training.families.style_adain import StyleAdaINFamily
from training.families.text_diffusion import TextDiffusionFamily
from training.families.vae import VAEFamily

FAMILIES: dict[str, Callable[[ml_collections.ConfigDict], Any]] = {
    "consistency": ConsistencyFamily,
    "diffusion": DiffusionFamily,
    "gan": GANFamily,
    "latent_diffusion": LatentDiffusionFamily,
    "noise_classifier": NoiseClassifierFamily,
    "progressive_distillation": ProgressiveDistillationFamily,
    "reflow": ReflowFamily,
    "style_adain": StyleAdaINFamily,
    "text_diffusion": TextDiffusionFamily,
    "vae": VAEFamily,
}

def declares(family: str, capability: str) -> bool:
    """Whether `family` declares `capability` whatever its config (a capability that
    depends on the config, as diffusion's guidance does, needs the built family)."""
    return capability in FAMILIES[family].capabilities if family in FAMILIES else False


def _flat(node, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, ml_collections.ConfigDict):
        out = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}.{key}" if prefix else key))
        return out
    return {prefix: node}


def _first_refused(config, defaults, family: str) -> tuple[str, str] | None:
    """The first setting changed from its default (dotted) whose group in
    `configs.sections` `family` does not take, with that group; None if there is none."""
    taken = sections.FAMILY_GROUPS[family]
    default = _flat(defaults)
    for key, value in _flat(config).items():
        if value == default.get(key):
            continue
        group = sections.group_of(key, default)
        if group is not None and group not in taken:
            return key, group
    return None


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
    """UserError if the config sets another family's settings (changes a key of a
    `configs.sections` group its family does not take) or names its network, asks
    for a compute dtype / rematerialisation its network cannot have, or a batch that does
    not cut into its gradient-accumulation micro-batches."""
    from configs.default import get_default_config

    family = config.model.family
    if family not in FAMILIES:
        raise UserError(f"config.model.family={family!r} is not one of {sorted(FAMILIES)}")
    owner = sections.NETWORK_FAMILIES.get(config.model.name)
    if owner is not None and owner != family:
        raise UserError(f"model.name={config.model.name!r} is a {owner.upper()} network; this "
                        f"run is model.family={family!r} (set model.family={owner!r})")
    _check_precision_settings(config)
    accumulate.check_accumulation(config.training.batch_size,
                                  config.training.grad_accum_steps)
    if refused := _first_refused(config, get_default_config(), family):
        key, group = refused
        families = sections.families_of(group)
        takers = (f"model.family={families[0]!r}" if len(families) == 1 else
                  f"model.family {', '.join(map(repr, families))} only")
        raise UserError(f"config.{key} is a setting of {takers}; this run is "
                        f"model.family={family!r}")


def get_family(config: ml_collections.ConfigDict, statistics: dict | None = None):
    """Builds the family named by `config.model.family` from its `statistics` (what a
    checkpoint stores, `checkpoint.saved_statistics`). None computes them, as a run does
    when it starts: that reads the training data (and a latent model's VAE run)."""
    name = config.model.family
    if name not in FAMILIES:
        raise UserError(f"config.model.family={name!r} is not one of {sorted(FAMILIES)}")
    check_family_settings(config)
    family_cls = FAMILIES[name]
    if statistics is None:
        statistics = family_cls.compute_statistics(config)
    return family_cls(config, statistics)
