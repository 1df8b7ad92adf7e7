"""The autoencoder that digits_latent_vp.py diffuses in: the digits VAE (4x4x2 latent,
discretised logistic decoder) with the KL weighted 0.01 instead of 1.

A diffusion model learns the latents' distribution itself, so the KL only has to keep the
latent space tame, not make the posterior match N(0, I); with beta = 1 the decoder's
means are blurred and the latent model can be no sharper than its decoder (README, GANs,
VAEs and latent diffusion). Stable Diffusion's autoencoder makes the same trade with an
even smaller weight. Its prior samples are not meant to be looked at: use digits_vae.py
for a VAE."""

from configs import digits_vae


def get_config():
    config = digits_vae.get_config()
    config.vae.beta = 0.01
    return config
