"""Evaluation of the 2-D toy datasets (`toy_*`): the protocol of evaluation/protocol.py with
the points as their own features, and the exact density of data/toy.py as a floor.

- fd, kid, pr: on the coordinates. The reference is the first `REFERENCE_SIZE` train
  points (the toy splits are i.i.d., so a prefix is a random subset; all 100,000 would
  make the nearest-neighbour search of precision/recall ten times dearer and change
  nothing). The floor is the test split against it at the same `eval_size`. That split is
  i.i.d. too, so it is also the i.i.d. floor: no second one is drawn.
- cs, on `toy_gmm` only: the mixture's components are its classes, and the exact Bayes
  posterior of the component is the classifier (logits `-|x - mu_k|^2 / (2 s^2)`). It gives
  the classifier score, the component histogram and its normalised entropy (mode coverage),
  and `near_mode`, the share of points within `NEAR_MODE_STDS` standard deviations of their
  component's mean (the "high-quality samples" of the toy-GAN literature; 98.9% of the
  data).
- nll: negative log-likelihood in nats per point on the whole test split, by the
  probability-flow ODE (`family.make_log_likelihood` with the `config.eval.bpd_*`
  settings; no dequantization: the points are continuous). Its floor is the exact NLL of
  the same points under the true density where data/toy.py has one (`toy_gmm`,
  `toy_checkerboard`): the data's entropy, below which no model's expected NLL can go.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data import pipeline, toy
from errors import RequestError, UserError
from evaluation import bpd, protocol

REFERENCE_SIZE = 10_000
NEAR_MODE_STDS = 3.0
# Per dataset: the metrics that serve it (cs needs mixture components).
SAMPLE_METRICS = {"gmm": ("fd", "kid", "pr", "cs")}
DEFAULT_SAMPLE_METRICS = ("fd", "kid", "pr")


def toy_name(config: Any) -> str:
    return config.data.dataset.removeprefix(pipeline.TOY_PREFIX)


def component_logits(points: np.ndarray) -> np.ndarray:
    """Log posterior of each `toy_gmm` component, up to a per-point constant: the mixture
    is equal-weight and isotropic with one std, so only the squared distances differ."""
    sq_dist = np.sum((points[:, None, :] - toy.gmm_means()[None]) ** 2, axis=-1)
    return (-0.5 * sq_dist / toy.GMM_STD**2).astype(np.float32)


def near_mode_share(points: np.ndarray) -> float:
    """Share of points within NEAR_MODE_STDS stds of the nearest `toy_gmm` mean."""
    distance = np.linalg.norm(points[:, None, :] - toy.gmm_means()[None], axis=-1).min(axis=1)
    return float(np.mean(distance <= NEAR_MODE_STDS * toy.GMM_STD))


class PointsEvaluator:
    """SampleEvaluator's interface for float (N, 2) points; built once, then
    `evaluator(points) -> metrics`, `floor(n_fake)`, `iid_floor(n_fake)` (None: the test
    split is i.i.d.) and `describe()`."""

    feature_dim = 2

    def __init__(self, config: Any, which: tuple[str, ...]):
        self.name = toy_name(config)
        self.which = tuple(m for m in which if m in protocol.SAMPLE_METRICS)
        served = SAMPLE_METRICS.get(self.name, DEFAULT_SAMPLE_METRICS)
        refused = [m for m in self.which if m not in served]
        if refused:
            raise RequestError(
                f"metric {refused[0]!r} scores mixture components, and dataset "
                f"{config.data.dataset!r} has none; leave it out (--metrics "
                f"{','.join(m for m in which if m not in refused)})")
        self.seed = int(config.eval.seed)
        self.num_classes = toy.GMM_NUM_COMPONENTS if "cs" in served else 0
        train = pipeline.read_split(config.data, "train", limit=REFERENCE_SIZE)["image"]
        test = pipeline.read_split(config.data, "test")["image"]
        self.n_train, self.n_test = len(train), len(test)
        self.reference = self._features(train)
        self.test_features = self._features(test)

    def _features(self, points: np.ndarray) -> protocol.Features:
        points = np.asarray(points, np.float32)
        logits = component_logits(points) if self.num_classes else np.zeros((len(points), 0))
        return protocol.Features(points, logits)

    def _compare(self, other: protocol.Features, eval_size: int) -> dict[str, Any]:
        out = protocol.compare(self.reference, other, which=self.which, eval_size=eval_size,
                             num_classes=self.num_classes, seed=self.seed)
        if "cs" in self.which:
            out["near_mode"] = near_mode_share(other.features)
        return out

    def __call__(self, points: np.ndarray, labels: np.ndarray | None = None) -> dict[str, Any]:
        del labels  # no toy model is class-conditional
        return self._compare(self._features(points), min(len(points), self.n_test))

    def floor(self, n_fake: int) -> dict[str, Any]:
        """The same metrics for the first min(n_fake, n_test) test points vs the reference."""
        eval_size = min(n_fake, self.n_test)
        test = protocol.Features(self.test_features.features[:eval_size],
                               self.test_features.logits[:eval_size])
        return self._compare(test, eval_size)

    def iid_floor(self, n_fake: int) -> None:
        del n_fake  # the test split is i.i.d.: floor() is already the i.i.d. floor
        return None

    def describe(self) -> dict[str, Any]:
        return {"name": "points (identity: the 2-D coordinates)", "sha256": "-",
                "feature_dim": self.feature_dim,
                "classifier": "exact Bayes posterior of the mixture component"
                if self.num_classes else "none",
                "reference": f"the first {self.n_train} train points"}


def make_log_likelihood(config: Any, family: Any):
    """The family's compiled-once log-likelihood of points, or RequestError."""
    if bpd.LIKELIHOOD not in family.capabilities:
        raise RequestError(f"nll needs a likelihood of the points; model family "
                           f"{config.model.family!r} has none; leave nll out of the metrics")
    return family.make_log_likelihood(**bpd.likelihood_options(config))


def negative_log_likelihood(config: Any, family: Any, state: Any, log_likelihood=None, *,
                            limit: int | None = None) -> dict[str, Any]:
    """NLL in nats per point on the whole test split (padded, masked batches)."""
    log_likelihood = log_likelihood or make_log_likelihood(config, family)
    params = family.sample_params(state)
    split = bpd.split_over_devices(log_likelihood, params)
    nfes = []

    def per_batch(key, x):
        logp, nfe = split(key, x)
        nfes.append(int(nfe))
        return {"nll": -np.asarray(logp, np.float64)}

    nlls = bpd.map_test_split(config, per_batch, limit=limit, desc="nll")["nll"]
    if not np.isfinite(nlls).all():
        raise UserError("the likelihood is not finite on some test points")
    return {
        "nll": float(nlls.mean()), "nll_sem": bpd.standard_error(nlls),
        "nll_settings": {
            "n_test": len(nlls), "unit": "nats per point", "dequantization": "none",
            "method": "probability-flow ODE (diffrax tsit5, adaptive)",
            **bpd.likelihood_options(config),
            "mean_nfe_per_batch": float(np.mean(nfes)), "seed": int(config.eval.seed),
        },
    }


def exact_nll(config: Any) -> dict[str, Any]:
    """The true density's NLL of the test points (nats per point), or {} where data/toy.py
    has no closed form."""
    log_prob = toy.LOG_PROBS.get(toy_name(config))
    if log_prob is None:
        return {}
    points = pipeline.read_split(config.data, "test")["image"].astype(np.float64)
    nlls = -np.asarray(log_prob(points), np.float64)
    return {"nll": float(nlls.mean()), "nll_sem": bpd.standard_error(nlls)}
