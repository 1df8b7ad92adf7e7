"""Where training meets evaluation, and the one module of training/ that imports
evaluation/ (tests/test_import_directions.py holds it to that): evaluation/ scores samples
and arrays; this module restores a model and draws its samples for it.

- :class:`TrainingEvaluator`: the training loop's hook, `config.eval.metrics_during_training`
  every `training.eval_freq` steps.
- :func:`evaluate`: evaluate.py's report of a workdir's checkpoint (or of a samples file).
- :func:`prompt_accuracy`: how often a text model draws the digit its prompt names.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
from absl import logging

from data import captions
from data.samples_file import Samples
from errors import RequestError, UserError
from evaluation import fid_protocol, runner
from evaluation import metrics as M
from evaluation.protocol import (
    LIKELIHOOD_METRICS,
    SAMPLE_METRICS,
    check_metrics_fit_data,
    check_sample_count,
    get_extractor,
    parse_metrics,
)
from training import families, inference
from training.families.base import PROMPTS, STYLIZE
from training.families.request import SampleRequest


def eval_request(config: Any, num: int | None = None) -> SampleRequest:
    """The SampleRequest of evaluation's samples: `num` (default `eval.num_samples`) in
    batches of `eval.batch_size`, seed `eval.seed`, the config's sampler."""
    ev = config.eval
    return SampleRequest(int(ev.num_samples if num is None else num),
                         batch_size=int(ev.batch_size), seed=int(ev.seed))


class TrainingEvaluator:
    """`evaluator(state) -> {metric: float}`: `config.eval.metrics_during_training`, on
    `config.eval.num_samples` samples (EMA weights, the config's sampler, compiled once)
    and, if asked, bits/dim (nll for 2-D points); what the training loop writes to
    TensorBoard."""

    def __init__(self, config: Any, family: Any):
        self.config, self.family = config, family
        self.which = parse_metrics(config.eval.metrics_during_training)
        check_metrics_fit_data(config, self.which)
        self.samples = None
        if any(m in SAMPLE_METRICS for m in self.which):
            self.samples = runner.make_sample_evaluator(config, self.which)
            check_sample_count(self.which, int(config.eval.num_samples), self.samples)
            self.generate = inference.make_generator(family, eval_request(config))
        # Compiled once here, not at every evaluation.
        self._log_likelihood = self._measure_likelihood = None
        if any(m in LIKELIHOOD_METRICS for m in self.which):
            make, self._measure_likelihood, _ = runner.likelihood_functions(config)
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
    """The full report (`evaluation.runner.Evaluation`): metrics of the model's samples,
    the real-data floor, bits/dim (for 2-D points: nll, beside the true density's).

    Samples come from `samples_path` or are drawn from the workdir's latest checkpoint (or
    the one at `checkpoint_step`; EMA weights, the config's sampler), restored onto the
    mesh of `config.sharding.mesh` over `devices` (default: all) as training places it.
    Raises UserError on bad input before any work.
    """
    start = time.time()
    if families.declares(config.model.family, STYLIZE):  # before any feature network is read
        raise RequestError(f"model.family={config.model.family!r} is feed-forward style "
                           "transfer: it draws no samples and has no likelihood to evaluate; "
                           "stylize images with stylize.py --workdir")
    plan = runner.Evaluation(config, which, samples_path=samples_path,
                             num_samples=num_samples, inception_weights=inception_weights,
                             protocol=protocol, fid_reference=fid_reference)
    if checkpoint_step is not None and not plan.needs_model:
        raise RequestError("a checkpoint step was given, but nothing here reads a checkpoint: "
                           "the samples come from a file and no likelihood metric is asked for")
    family = state = step = log_likelihood = None
    if plan.needs_model:
        family, state, step = inference.restore_latest(config, workdir, step=checkpoint_step,
                                                       devices=devices)
    if plan.likelihood_metric:
        # A family without a likelihood of the data is refused here, before any sampling.
        log_likelihood = plan.make_log_likelihood(family)
    samples = None
    if plan.draws_samples:
        logging.info("Drawing %d samples from checkpoint step %d", plan.num, step)
        request = eval_request(config, plan.num)
        generate = inference.make_generator(family, request)
        images, nfe = generate(state, int(config.eval.seed))
        # A conditional model draws balanced labels: they give the conditional accuracy.
        samples = Samples(images, generate.labels,
                          {"sampler": family.sampler_name(request), "nfe": nfe,
                           "seed": int(config.eval.seed), "step": step})
    report = plan.report(workdir, samples, family=family, state=state,
                         log_likelihood=log_likelihood, step=step)
    if family is not None and PROMPTS in family.capabilities and samples is not None:
        report["prompt_accuracy"] = prompt_accuracy(
            config, family, state, per_prompt=int(config.eval.prompt_samples))
        report["prompt_accuracy"]["guidance_scale"] = float(config.sampling.guidance_scale)
    report["seconds"] = round(time.time() - start, 1)
    return report


def prompt_accuracy(config: Any, family: Any, state: Any, *, per_prompt: int,
                    guidance_scale: float | None = None, sampler: str | None = None,
                    steps: int | None = None) -> dict[str, float]:
    """{split: accuracy} for the caption splits (`data.captions.SPLITS`: the training
    phrasings and the held-out ones): `per_prompt` samples of every caption of the split
    (seed `eval.seed`), and the share that the project's digit classifier (the feature
    network of `eval.feature_net`) assigns to the digit the caption names."""
    if PROMPTS not in family.capabilities:
        raise UserError("prompt accuracy needs a text-conditional model (model.family="
                        f"'text_diffusion'); this one is model.family="
                        f"{config.model.family!r}")
    ev = config.eval
    extractor = get_extractor(config, feature_net=ev.feature_net,
                              inception_weights=ev.inception_weights,
                              batch_size=int(ev.batch_size))
    if extractor.num_classes != captions.NUM_CLASSES:
        raise UserError("prompt accuracy needs a digit classifier; the feature network "
                        f"{ev.feature_net!r} has {extractor.num_classes} classes")
    out = {}
    for split in captions.SPLITS:
        prompts = captions.bank(split)
        request = SampleRequest(per_prompt * len(prompts), batch_size=int(ev.batch_size),
                                seed=int(ev.seed), prompts=prompts, sampler=sampler,
                                steps=steps, guidance_scale=guidance_scale)
        images, _ = inference.generate(family, state, request)
        named = captions.digit_of_row(np.arange(len(images)) % len(prompts), split)
        out[split] = float(M.conditional_accuracy(extractor(images)[1], named))
        logging.info("prompt accuracy (%s phrasings, %d samples): %.4f", split, len(images),
                     out[split])
    return out
