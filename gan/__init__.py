"""Objectives of generative adversarial networks, pure JAX on logits and closures.

``losses`` (adversarial losses, registry ``LOSSES``), ``penalties`` (R1/R2 gradient
penalties and StyleGAN2's lazy regularisation), ``augment`` (DiffAugment) and ``ema``
(generator weight averaging with a half-life in images). Networks enter only as functions
passed by the caller, e.g. ``d_fn = lambda x: disc.apply(params, x)``. Import the
submodules directly: ``from gan import losses, penalties``.
"""
