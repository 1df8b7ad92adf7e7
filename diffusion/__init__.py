"""Score-based diffusion: forward SDEs (``sde_lib``), score parametrisations and closed-form
scores (``score``), training losses (``losses``) and samplers (``sampling``).

Everything here is pure JAX on any ``score_fn(x, t)``; networks enter only through
``score.get_score_fn``. Import the submodules directly, e.g.
``from diffusion import sde_lib, sampling``.
"""
