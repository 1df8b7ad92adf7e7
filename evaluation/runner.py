"""The evaluation report: :func:`evaluate` draws or loads the samples, scores them under the
protocol of `evaluation.protocol` (the metrics, the real-data floor, the i.i.d. floor, bits/dim
or the nll of 2-D points) and assembles the report; :func:`write_json` and
:func:`format_table` write it out. :class:`TrainingEvaluator` is the same protocol for the
training loop.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from absl import logging

from data import pipeline
from errors import UserError
from evaluation import fid_protocol
from evaluation.protocol import (
    LIKELIHOOD_METRICS,
    SAMPLE_METRICS,
    check_metrics_fit_data,
    check_sample_count,
    likelihood_functions,
    make_sample_evaluator,
    parse_metrics,
)
from evaluation.samples_file import Samples, load_samples


class TrainingEvaluator:
    """`evaluator(state) -> {metric: float}`: `config.eval.metrics_during_training`, on
    `config.eval.num_samples` samples (EMA weights, the config's sampler, compiled once)
    and, if asked, bits/dim (nll for 2-D points); what the training loop writes to
    TensorBoard."""

    def __init__(self, config: Any, family: Any):
        from training import inference

        self.config, self.family = config, family
        self.which = parse_metrics(config.eval.metrics_during_training)
        check_metrics_fit_data(config, self.which)
        self.samples = None
        if any(m in SAMPLE_METRICS for m in self.which):
            self.samples = make_sample_evaluator(config, self.which)
            check_sample_count(self.which, int(config.eval.num_samples), self.samples)
            self.generate = inference.make_generator(
                family, int(config.eval.num_samples), batch_size=int(config.eval.batch_size)
            )
        # Compiled once here, not at every evaluation.
        self._log_likelihood = self._measure_likelihood = None
        if any(m in LIKELIHOOD_METRICS for m in self.which):
            make, self._measure_likelihood, _ = likelihood_functions(config)
            self._log_likelihood = make(config, family)

    def __call__(self, state: Any) -> dict[str, float]:
        out: dict[str, Any] = {}
        if self.samples is not None:
            images, _ = self.generate(state, int(self.config.eval.seed))
            out.update(self.samples(images, self.generate.labels))
        if self._measure_likelihood is not None:
            out.update(self._measure_likelihood(self.config, self.family, state,
                                                self._log_likelihood))
        return {f"eval/{k}": float(v) for k, v in out.items() if isinstance(v, float | int)}


def evaluate(config: Any, workdir: str | os.PathLike, *, which: tuple[str, ...],
             samples_path: str | None = None, num_samples: int | None = None,
             inception_weights: str = "", checkpoint_step: int | None = None,
             devices: Any = None, protocol: str = fid_protocol.FLOORS,
             fid_reference: str = "") -> dict[str, Any]:
    """The full report: metrics of the model's samples, the real-data floor, bits/dim
    (for 2-D points: nll, beside the true density's).

    Samples come from `samples_path` or are drawn from the workdir's latest checkpoint (or
    the one at `checkpoint_step`; EMA weights, the config's sampler), restored onto the
    mesh of `config.sharding.mesh` over `devices` (default: all) as training places it.
    Raises UserError on bad input before any work.
    """
    from training import inference

    start = time.time()
    fid = protocol == fid_protocol.FID50K  # the literature's FID-50k: FID only
    if fid:
        which, num_samples = ("fd",), num_samples or fid_protocol.NUM_SAMPLES
    check_metrics_fit_data(config, which)
    info = pipeline.get_info(config.data)
    samples = None
    if samples_path is not None:
        samples = load_samples(samples_path, tuple(info.shape), num_classes=info.num_classes)
        if num_samples is not None:
            samples = dataclasses.replace(
                samples, images=samples.images[:num_samples],
                labels=None if samples.labels is None else samples.labels[:num_samples])
    sample_metrics = tuple(m for m in which if m in SAMPLE_METRICS)
    num = len(samples.images) if samples else int(num_samples or config.eval.num_samples)
    evaluator = None
    if sample_metrics:
        if fid:
            evaluator = fid_protocol.make_evaluator(config, num, reference=fid_reference,
                                                    inception_weights=inception_weights)
        else:
            evaluator = make_sample_evaluator(config, which, inception_weights=inception_weights)
            check_sample_count(which, num, evaluator)
    family = state = step = log_likelihood = None
    likelihood_metric = next((m for m in which if m in LIKELIHOOD_METRICS), None)
    restores = bool(likelihood_metric or (sample_metrics and samples is None))
    if checkpoint_step is not None and not restores:
        raise UserError("a checkpoint step was given, but nothing here reads a checkpoint: "
                        "the samples come from a file and no likelihood metric is asked for")
    if restores:
        family, state, step = inference.restore_latest(config, workdir, step=checkpoint_step,
                                                       devices=devices)
    if likelihood_metric:
        make_log_likelihood, measure_likelihood, likelihood_floor = likelihood_functions(config)
        # A family without a likelihood of the data is refused here, before any sampling.
        try:
            log_likelihood = make_log_likelihood(config, family)
        except UserError as err:
            rest = ",".join(m for m in which if m != likelihood_metric)
            raise UserError(f"{err}; leave {likelihood_metric} out of the metrics"
                            + (f" (--metrics {rest})" if rest else "")) from None
    if sample_metrics and samples is None:
        logging.info("Drawing %d samples from checkpoint step %d", num, step)
        generate = inference.make_generator(family, num, batch_size=int(config.eval.batch_size))
        images, nfe = generate(state, int(config.eval.seed))
        # A conditional model draws balanced labels: they give the conditional accuracy.
        sampler = getattr(family, "sampler_name", config.sampling.method)
        samples = Samples(images, generate.labels,
                          {"sampler": sampler, "nfe": nfe,
                           "seed": int(config.eval.seed), "step": step})
    report: dict[str, Any] = {"dataset": config.data.dataset, "workdir": str(workdir),
                              "metrics_asked": list(which), "protocol": protocol}
    if fid:
        report.update(evaluator(samples.images), samples={
            "file": samples_path, "n_fake": len(samples.images), **samples.provenance})
    elif evaluator is not None:
        n_fake = len(samples.images)
        report.update(
            feature_network=evaluator.describe(),
            samples={"file": samples_path, "n_fake": n_fake, **samples.provenance},
            n_real_reference=evaluator.n_train, n_real_test=evaluator.n_test,
            eval_size=min(n_fake, evaluator.n_test), seed=evaluator.seed,
            model=evaluator(samples.images, samples.labels),
            real_floor=evaluator.floor(n_fake),
        )
        iid_floor = evaluator.iid_floor(n_fake) if "fd" in which else None
        if iid_floor:
            report["real_floor_iid"] = iid_floor
    if likelihood_metric:
        logging.info("%s on the test split (%s)", likelihood_metric, "ELBO and IWAE bounds"
                     if hasattr(family, "make_bounds") else
                     f"{config.eval.bpd_divergence} divergence")
        report.setdefault("model", {}).update(
            measure_likelihood(config, family, state, log_likelihood))
        floor = likelihood_floor(config)
        if floor:
            report.setdefault("real_floor", {}).update(floor)
        report["checkpoint_step"] = step
    report["seconds"] = round(time.time() - start, 1)
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
