"""The evaluation report from samples: :class:`Evaluation` checks what is asked, loads a
samples file if one is given, builds the feature network once, and scores samples under
the protocol of `evaluation.protocol` (the metrics, the real-data floor, the i.i.d. floor,
bits/dim or the nll of 2-D points); :func:`write_json` and :func:`format_table` write the
report out.

Nothing here restores a checkpoint or draws samples: a model arrives as arguments (its
family, state and compiled log-likelihood), from `training.eval_hook`, which does both for
evaluate.py and for the training loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import logging

from data import pipeline
from data.samples_file import Samples, load_samples
from errors import RequestError, UserError
from evaluation import bpd, fid_protocol, points
from evaluation.protocol import (
    LIKELIHOOD_METRICS,
    SAMPLE_METRICS,
    SampleEvaluator,
    check_metrics_fit_data,
    check_sample_count,
    is_points,
)


def make_sample_evaluator(config: Any, which: tuple[str, ...], *,
                          inception_weights: str = ""):
    """SampleEvaluator for images, `points.PointsEvaluator` for 2-D toy data."""
    if is_points(config):
        return points.PointsEvaluator(config, which)
    return SampleEvaluator(config, which, inception_weights=inception_weights)


def likelihood_functions(config: Any):
    """(make_log_likelihood, measure, real_floor) for the data's likelihood metric: bits/dim
    of images (`evaluation.bpd`; no real floor) or the NLL of points (`evaluation.points`;
    the true density's, where known)."""
    if is_points(config):
        return points.make_log_likelihood, points.negative_log_likelihood, points.exact_nll
    return bpd.make_log_likelihood, bpd.bits_per_dim, lambda config: {}


class Evaluation:
    """One evaluation of `which` metrics, checked and prepared before any work: the
    samples of `samples_path` (the first `num_samples`), or `num` to be drawn (default
    `config.eval.num_samples`); the feature network; the protocol (`floors`, or `fid50k`:
    FID alone on 50,000 samples by default). Raises UserError on bad input.

    `needs_model`: whether a checkpoint must be restored (to draw the samples, or for a
    likelihood metric). Then `make_log_likelihood(family)` (the compiled likelihood, or
    UserError) and `report(workdir, samples, family=, state=, log_likelihood=, step=)`.
    """

    def __init__(self, config: Any, which: tuple[str, ...], *, samples_path: str | None = None,
                 num_samples: int | None = None, inception_weights: str = "",
                 protocol: str = fid_protocol.FLOORS, fid_reference: str = ""):
        self.config, self.protocol, self.samples_path = config, protocol, samples_path
        self.fid = protocol == fid_protocol.FID50K  # the literature's FID-50k: FID only
        if self.fid:
            which, num_samples = ("fd",), num_samples or fid_protocol.NUM_SAMPLES
        self.which = tuple(which)
        check_metrics_fit_data(config, which)
        info = pipeline.get_info(config.data)
        self.samples = None
        if samples_path is not None:
            samples = load_samples(samples_path, tuple(info.shape),
                                   num_classes=info.num_classes)
            if num_samples is not None:
                samples = dataclasses.replace(
                    samples, images=samples.images[:num_samples],
                    labels=None if samples.labels is None else samples.labels[:num_samples])
            self.samples = samples
        self.sample_metrics = tuple(m for m in which if m in SAMPLE_METRICS)
        self.num = (len(self.samples.images) if self.samples
                    else int(num_samples or config.eval.num_samples))
        self.evaluator = None
        if self.sample_metrics:
            if self.fid:
                self.evaluator = fid_protocol.make_evaluator(
                    config, self.num, reference=fid_reference,
                    inception_weights=inception_weights)
            else:
                self.evaluator = make_sample_evaluator(config, which,
                                                       inception_weights=inception_weights)
                check_sample_count(which, self.num, self.evaluator)
        self.likelihood_metric = next((m for m in which if m in LIKELIHOOD_METRICS), None)

    @property
    def draws_samples(self) -> bool:
        """True if the samples are to be drawn from the model (no samples file)."""
        return bool(self.sample_metrics) and self.samples is None

    @property
    def needs_model(self) -> bool:
        return bool(self.likelihood_metric) or self.draws_samples

    def make_log_likelihood(self, family: Any):
        """The family's compiled-once log-likelihood for the likelihood metric; a family
        without one is a UserError naming the metrics to ask for instead."""
        make_log_likelihood, _, _ = likelihood_functions(self.config)
        try:
            return make_log_likelihood(self.config, family)
        except UserError as err:
            rest = ",".join(m for m in self.which if m != self.likelihood_metric)
            raise RequestError(f"{err}; leave {self.likelihood_metric} out of the metrics"
                               + (f" (--metrics {rest})" if rest else "")) from None

    def report(self, workdir: str | os.PathLike, samples: Samples | None = None, *,
               family: Any = None, state: Any = None, log_likelihood: Any = None,
               step: int | None = None) -> dict[str, Any]:
        """The full report: metrics of `samples` (default: the samples file's), the
        real-data floor, and the likelihood metric of `family` at `state` (its
        `log_likelihood`, from make_log_likelihood) at checkpoint `step`."""
        config, which = self.config, self.which
        samples = samples if samples is not None else self.samples
        report: dict[str, Any] = {"dataset": config.data.dataset, "workdir": str(workdir),
                                  "metrics_asked": list(which), "protocol": self.protocol}
        evaluator = self.evaluator
        if self.fid and evaluator is not None:
            report.update(evaluator(samples.images), samples={
                "file": self.samples_path, "n_fake": len(samples.images),
                **samples.provenance})
        elif evaluator is not None:
            n_fake = len(samples.images)
            report.update(
                feature_network=evaluator.describe(),
                samples={"file": self.samples_path, "n_fake": n_fake, **samples.provenance},
                n_real_reference=evaluator.n_train, n_real_test=evaluator.n_test,
                eval_size=min(n_fake, evaluator.n_test), seed=evaluator.seed,
                model=evaluator(samples.images, samples.labels),
                real_floor=evaluator.floor(n_fake),
            )
            iid_floor = evaluator.iid_floor(n_fake) if "fd" in which else None
            if iid_floor:
                report["real_floor_iid"] = iid_floor
        if self.likelihood_metric:
            _, measure_likelihood, likelihood_floor = likelihood_functions(config)
            logging.info("%s on the test split (%s)", self.likelihood_metric,
                         "ELBO and IWAE bounds" if bpd.BOUNDS in family.capabilities else
                         f"{config.eval.bpd_divergence} divergence")
            report.setdefault("model", {}).update(
                measure_likelihood(config, family, state, log_likelihood))
            floor = likelihood_floor(config)
            if floor:
                report.setdefault("real_floor", {}).update(floor)
            report["checkpoint_step"] = step
        return report


def write_json(report: Mapping[str, Any], path: str | os.PathLike) -> None:
    """Writes `report` atomically: a reader never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(report, f, indent=2, default=lambda o: o.item() if hasattr(o, "item") else str(o))
    os.replace(tmp, path)


_ROWS = (("fd", "FD"), ("kid", "KID"), ("precision", "precision"), ("recall", "recall"),
         ("classifier_score", "classifier score"), ("class_entropy", "class entropy"),
         ("near_mode", "near a mode"), ("conditional_accuracy", "conditional accuracy"),
         ("bpd", "bits/dim"), ("iwae_nats", "nats/image"), ("elbo_bpd", "ELBO bits/dim"),
         ("elbo_nats", "ELBO nats/image"), ("nll", "NLL (nats/point)"))


def _with_spread(values: Mapping[str, Any], key: str) -> str:
    text = f"{values[key]:.4g}"
    spread = values.get(f"{key}_std", values.get(f"{key}_sem"))
    return text + (f" ± {spread:.2g}" if spread else "")


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a small text table: metric, model, real-data floor, and the i.i.d.
    floor where there is one (FD)."""
    if report.get("protocol") == fid_protocol.FID50K:
        return fid_protocol.format_report(report)
    model, floor = report.get("model", {}), report.get("real_floor", {})
    iid = report.get("real_floor_iid", {})
    lines = [f"{'metric':<22}{'model':>18}{'real floor':>14}"
             + (f"{'i.i.d. floor':>18}" if iid else "")]
    for key, label in _ROWS:
        if key not in model:
            continue
        floor_value = f"{floor[key]:.4g}" if key in floor else "-"
        line = f"{label:<22}{_with_spread(model, key):>18}{floor_value:>14}"
        if iid:
            line += f"{_with_spread(iid, key) if key in iid else '-':>18}"
        lines.append(line)
    if "feature_network" in report:
        fn = report["feature_network"]
        kind = "points" if report["dataset"].startswith(pipeline.TOY_PREFIX) else "images"
        checksum = f" (sha256 {fn['sha256'][:12]})" if fn["sha256"] != "-" else ""
        lines.append(
            f"features: {fn['name']}{checksum}, n_fake "
            f"{report['samples']['n_fake']}, eval_size {report['eval_size']}, reference: "
            f"{report['n_real_reference']} train {kind}, floor: test {kind}"
            + (f"; i.i.d. floor: {iid['splits']} random real splits" if iid else "")
        )
    return "\n".join(lines)
