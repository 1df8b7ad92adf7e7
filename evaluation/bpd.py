"""Bits/dim of a model on the whole test split, the way evaluate.py reports it.

The test split goes through the data pipeline (padded, masked batches), uniformly
dequantized with a fixed seed, and each image's log-density comes from the
probability-flow ODE (`family.make_log_likelihood`). Each batch is split over the devices
of the mesh the parameters are placed on (every process passes the whole batch, as every
process reads it), so N devices each integrate 1/N of it rather than all of it.
With `config.eval.bpd_dequant_samples` K > 1, each image is dequantized K times (the
first with the K = 1 noise) and its log-density is the importance-weighted
log (1/K) sum_k p(x + u_k), a tighter bound on the 8-bit log-probability. A VAE reports its
IWAE bound and ELBO on the discrete data instead, in bits/dim and in nats per image.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

import progress
from data import pipeline
from errors import UserError

LIKELIHOOD, BOUNDS = "likelihood", "bounds"  # training.families.base's capability names


def likelihood_options(config: Any) -> dict[str, Any]:
    """The probability-flow likelihood settings of `config.eval.bpd_*` (also nll's)."""
    ev = config.eval
    return dict(divergence=ev.bpd_divergence, eps=ev.bpd_eps, rtol=ev.bpd_rtol, atol=ev.bpd_atol,
                num_probes=ev.bpd_num_probes)


def standard_error(values: np.ndarray) -> float:
    """Standard error of the mean of per-example values (0 for fewer than two)."""
    return float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0


def _num_batches(config: Any, limit: int | None) -> int | None:
    """The batches a pass over the test split reads (up to `limit` examples), for a
    progress bar; None (nothing read) where bars are off."""
    if not progress.enabled():
        return None
    n = pipeline.get_info(config.data).num_test
    return math.ceil((n if limit is None else min(n, limit)) / int(config.eval.batch_size))


def _batch_placement(params: Any) -> NamedSharding | None:
    """The sharding that splits a batch's leading axis over every device of the mesh
    `params` are placed on; None if they are not on a mesh of several devices. (The
    placement `training.inference` gives samples; evaluation/ does not import training/.)"""
    for leaf in jax.tree.leaves(params):
        placed = getattr(leaf, "sharding", None)
        if isinstance(placed, NamedSharding):
            mesh = placed.mesh
            return NamedSharding(mesh, PartitionSpec(mesh.axis_names)) if mesh.size > 1 else None
    return None


def split_over_devices(fn, params: Any):
    """`(key, x) -> fn(params, key, x)` (a tree of (B, ...) arrays and scalars) with `x`
    (every process's same host batch) split over the devices of the mesh `params` are
    placed on: padded with copies of its last row to a multiple of them, the padding cut
    from the (gathered, host) outputs. Unsplit if `params` are not on such a mesh."""
    placement = _batch_placement(params)
    if placement is None:
        return lambda key, x: fn(params, key, x)

    def split(key, x):
        x = np.asarray(x)
        n, devices = len(x), placement.mesh.size
        padded = -(-n // devices) * devices
        if padded != n:
            x = np.concatenate([x, np.repeat(x[-1:], padded - n, axis=0)])
        global_x = jax.make_array_from_callback(x.shape, placement, lambda index: x[index])
        out = multihost_utils.process_allgather(fn(params, key, global_x), tiled=True)
        return jax.tree.map(lambda v: np.asarray(v)[:n] if np.ndim(v) else np.asarray(v), out)

    return split


def map_test_split(config: Any, per_batch, *, limit: int | None = None,
                   desc: str = "test split") -> dict[str, np.ndarray]:
    """`per_batch(key, x) -> {name: (B,) array}` over the whole test split in padded
    batches of `config.eval.batch_size` (key: fold_in(PRNGKey(eval.seed), batch index));
    the padding rows dropped, the rest concatenated, cut at `limit` examples."""
    key = jax.random.PRNGKey(int(config.eval.seed))
    values: dict[str, list[np.ndarray]] = {}
    count = 0
    batches = pipeline.make_eval_iterator(config.data, batch_size=int(config.eval.batch_size),
                                          split="test")
    for i, batch in enumerate(progress.bar(batches, total=_num_batches(config, limit),
                                           desc=desc)):
        if limit is not None and count >= limit:
            break
        out = jax.device_get(per_batch(jax.random.fold_in(key, i), batch["image"]))
        for name, value in out.items():
            values.setdefault(name, []).append(np.asarray(value, np.float64)[batch["mask"]])
        count += int(batch["mask"].sum())
    return {name: np.concatenate(parts)[:limit] for name, parts in values.items()}


def _dequant_samples(config: Any) -> int:
    k = config.eval.bpd_dequant_samples
    if isinstance(k, bool) or int(k) != k or k < 1:
        raise UserError(f"config.eval.bpd_dequant_samples must be a positive integer, got {k!r}")
    return int(k)


def _dequant_seeds(seed: int, k: int) -> list[int]:
    """The pipeline seed of each dequantization sample: `seed` first (the K = 1 noise), then
    seeds derived from (seed, j), independent of every plain integer seed."""
    return [seed] + [int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
                     for j in range(1, k)]


def make_log_likelihood(config: Any, family: Any):
    """The family's compiled-once likelihood function (a VAE's bounds), or UserError."""
    # Capability names (training.families.base): plain strings, so evaluation/ needs no
    # training/ import.
    if BOUNDS in family.capabilities:  # a VAE: bounds on the discrete likelihood
        return family.make_bounds()
    if LIKELIHOOD not in family.capabilities:
        raise UserError(family.refusal([(LIKELIHOOD, "bits/dim")]))
    if not family.is_image_data:
        raise UserError("bits/dim is defined for 8-bit image data, not 2-D points")
    _dequant_samples(config)
    return family.make_log_likelihood(**likelihood_options(config))


def bits_per_dim(config: Any, family: Any, state: Any, log_likelihood=None, *,
                 limit: int | None = None) -> dict[str, Any]:
    """NLL in bits/dim on the whole test split (see the module docstring); pass
    `log_likelihood` (family.make_log_likelihood) to reuse a compiled one.

    With K = `config.eval.bpd_dequant_samples`, each batch is read K times with independent
    dequantization noise u_k (pipeline seeds from `_dequant_seeds`; probe keys fold_in(key_i,
    k) for k >= 1) and scored log (1/K) sum_k p(x + u_k) (`importance_weighted_logp`); K = 1
    is plain uniform dequantization. `limit` scores only the first `limit` test images (for
    quick checks; the report's `n_test` says how many).
    """
    from diffusion.likelihood import bits_per_dim as to_bits
    from diffusion.likelihood import importance_weighted_logp

    if BOUNDS in family.capabilities:
        return _bound_bits_per_dim(config, family, state, log_likelihood, limit=limit)
    num_dequant = _dequant_samples(config)
    log_likelihood = log_likelihood or make_log_likelihood(config, family)
    ev = config.eval
    options = likelihood_options(config)
    if num_dequant > 1 and options["divergence"] != "exact":
        logging.warning("bits/dim with %d dequantization samples and a Hutchinson divergence: "
                        "the probe noise biases log-mean-exp upwards (bits/dim down); the "
                        "bound holds for the exact divergence", num_dequant)
    data_config = dict(config.data.to_dict(), uniform_dequantization=True)
    iterators = [pipeline.make_eval_iterator(data_config, batch_size=int(ev.batch_size),
                                             split="test", seed=seed)
                 for seed in _dequant_seeds(int(ev.seed), num_dequant)]
    params = family.sample_params(state)
    split = split_over_devices(log_likelihood, params)
    key = jax.random.PRNGKey(int(ev.seed))
    bpds, nfes, count = [], [], 0
    batches_and_dequants = progress.bar(zip(*iterators, strict=True),
                                        total=_num_batches(config, limit), desc="bits/dim")
    for i, batches in enumerate(batches_and_dequants):
        if limit is not None and count >= limit:
            break
        batch_key = jax.random.fold_in(key, i)
        logps = []
        for k, batch in enumerate(batches):
            logp, nfe = split(jax.random.fold_in(batch_key, k) if k else batch_key,
                              batch["image"])
            logps.append(np.asarray(logp))
            nfes.append(int(nfe))
        logp = importance_weighted_logp(np.stack(logps))
        bpd = np.asarray(to_bits(logp, family.data_shape, centered=config.data.centered))
        bpds.append(bpd[batches[0]["mask"]])
        count += len(bpds[-1])
    bpds = np.concatenate(bpds)[:limit]
    if not np.isfinite(bpds).all():
        raise UserError("the likelihood is not finite on some test images")
    if num_dequant == 1:
        dequantization = "uniform, (k + U[0,1)) / 256"
    else:
        dequantization = (f"importance-weighted over {num_dequant} uniform samples, "
                          "log (1/K) sum_k p((k + U_k[0,1)) / 256)")
    return {
        "bpd": float(bpds.mean()),
        "bpd_sem": standard_error(bpds),
        "bpd_settings": {
            "n_test": len(bpds), "dequantization": dequantization,
            "dequant_samples": num_dequant,
            "method": "probability-flow ODE (diffrax tsit5, adaptive)", **options,
            # One solve per batch and dequantization sample.
            "mean_nfe_per_batch": float(np.mean(nfes)), "seed": int(ev.seed),
        },
    }


def _bound_bits_per_dim(config: Any, family: Any, state: Any, bounds=None, *,
                        limit: int | None = None) -> dict[str, Any]:
    """A VAE's importance-weighted bound (`bpd`, `iwae_nats`) and ELBO (`elbo_bpd`,
    `elbo_nats`) on the whole test split, in bits/dim and in nats per image, each with its
    standard error. Both units are of the negated bound (-log P(x) or more, lower is
    better), so bits/dim = nats / (D ln 2). Its decoder gives the probability of the
    discrete data itself, so no dequantization is needed; with an 8-bit likelihood the
    numbers bound the same quantity as a diffusion model's dequantized bits/dim (a
    Bernoulli decoder's bound the data binarised at mid-grey)."""
    ev = config.eval
    bounds = bounds or family.make_bounds()
    params = family.sample_params(state)

    split = split_over_devices(bounds, params)

    def per_batch(key, x):
        out = split(key, x)
        return {name: out[name] for name in ("iwae", "elbo")}

    values = map_test_split(config, per_batch, limit=limit, desc="bits/dim (bounds)")
    # Negated here, in float64, so that the two units differ by exactly the factor D ln 2
    # (the convention of vae.elbo.bits_per_dim).
    nats = {name: -values[name] for name in ("iwae", "elbo")}
    if not all(np.isfinite(v).all() for v in nats.values()):
        raise UserError("the VAE's bounds are not finite on some test images")
    bits = {name: v / (family.num_dims * math.log(2.0)) for name, v in nats.items()}
    vae = config.vae
    likelihood = (f"{vae.likelihood}, {vae.num_bins} levels" if vae.likelihood != "bernoulli"
                  else "bernoulli, of the data binarised at mid-grey")
    return {
        "bpd": float(bits["iwae"].mean()), "bpd_sem": standard_error(bits["iwae"]),
        "elbo_bpd": float(bits["elbo"].mean()), "elbo_bpd_sem": standard_error(bits["elbo"]),
        "iwae_nats": float(nats["iwae"].mean()), "iwae_nats_sem": standard_error(nats["iwae"]),
        "elbo_nats": float(nats["elbo"].mean()), "elbo_nats_sem": standard_error(nats["elbo"]),
        "bpd_settings": {
            "n_test": len(nats["iwae"]),
            "method": f"importance-weighted bound, k={vae.iwae_samples}",
            "elbo": "one posterior sample per image",
            "units": "bits/dim and nats per image of -log P(x) bounds: bpd = nats / (D ln 2), "
                     f"D = {family.num_dims}",
            "likelihood": likelihood,
            "dequantization": "none: the decoder's likelihood is of the discrete data",
            "seed": int(ev.seed),
        },
    }
