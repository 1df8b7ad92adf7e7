"""Objectives of variational autoencoders, pure JAX on closures.

``likelihoods`` (decoder likelihoods of discrete data, registry ``DECODER_LIKELIHOODS``)
and ``elbo`` (Gaussian KL, KL warm-up and free bits, the ELBO, the importance-weighted
bound, bits/dim). Networks enter only as functions passed by the caller:
``encode_fn(x) -> (mean, logvar)`` and ``decode_log_prob_fn(z, x) -> (B,)``. Import the
submodules directly: ``from vae import elbo, likelihoods``.
"""
