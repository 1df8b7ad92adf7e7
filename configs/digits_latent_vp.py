"""Latent diffusion on the digits: the digits_vp recipe in the 4x4x2 latent space of the
autoencoder trained by configs/digits_latent_ae.py (train that first, into
runs/digits_latent_ae), self-conditioned on 20 k-means clusters of the training latents (no
labels: the model is unconditional; sampling draws the clusters i.i.d., or stratified with
--config.model.cluster_draws=stratified)."""

from configs import digits_vp


def get_config():
    config = digits_vp.get_config()
    config.model.family = "latent_diffusion"
    config.latent.vae_config = "configs/digits_latent_ae.py"
    config.latent.vae_workdir = "runs/digits_latent_ae"
    config.model.ch_mult = (1, 2)
    # Twice digits_vp's steps: FD 0.140 at 4,000 steps, 0.117 at 8,000 (README).
    config.training.n_iters = 8000
    config.model.self_condition_clusters = 20
    # The model has the likelihood of its latents, not of the images: no bits/dim.
    config.eval.metrics = "fd,kid,pr,cs"
    return config
