"""The sampling half of the diffusion family: what it can do (capabilities and their
refusals), the request check, the sampler `diffusion.tasks` assembles, classifier-free
guidance and the probability-flow likelihood.

`DiffusionSampling` is a mixin of `DiffusionFamily`, which provides `config`, `sde`,
`data_shape`, `num_classes`, `null_label`, `clusters`, `is_conditional`, `score_fn` and
`_no_marginal_score`.
"""

import jax

from diffusion import likelihood, sampling, tasks
from errors import RequestError, UserError
from training.families import base, common
from training.families.request import SampleRequest

IMAGE_TASKS = (base.INPAINT, base.COLORIZE, base.SDEDIT)


class DiffusionSampling:
    """Sampling and likelihood of a score model (see the module docstring)."""

    def _capabilities(self) -> frozenset[str]:
        out = {base.SAMPLE, base.SAMPLERS, base.LIKELIHOOD, base.GUIDANCE,
               base.CLASSIFIER_GUIDANCE, base.AUTOGUIDANCE, *IMAGE_TASKS}
        if self.clusters:  # no marginal score: plain sampling only
            out -= {base.LIKELIHOOD, base.CLASSIFIER_GUIDANCE, base.AUTOGUIDANCE, *IMAGE_TASKS}
        if not self.is_image_data or self.sde.ode_only:
            # The image tasks run reverse-SDE predictors, which a flow path does not have.
            out -= set(IMAGE_TASKS)
        elif self.data_shape[-1] < 2:
            out.discard(base.COLORIZE)
        return frozenset(out)

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        capability, flag = missing[0]
        what = capability if capability in IMAGE_TASKS else flag
        if capability == base.LIKELIHOOD:
            return self._no_marginal_score("likelihood here")
        if self.clusters:
            return self._no_marginal_score(
                f"score for {capability if capability in IMAGE_TASKS else 'guided sampling'}")
        if not self.is_image_data:
            return f"{what} is for image data, not 2-D points"
        if self.sde.ode_only and capability in IMAGE_TASKS:
            return (f"{capability} runs a reverse-SDE sampler, and this flow-matching model "
                    f"(training.sde={self.config.training.sde!r}) has only its ODE")
        return (f"--colorize needs an RGB model; {self.config.data.dataset!r} has "
                f"{self.data_shape[-1]} channel")

    def _guidance(self, request: SampleRequest) -> float:
        if request.guidance_scale is None:
            return float(self.config.sampling.get("guidance_scale", 0.0))
        return float(request.guidance_scale)

    def accepts(self, request: SampleRequest, *, classifier=None, guide=None) -> None:
        """UserError for what the request asks that this model cannot do: the family's
        capabilities, then classifier-free guidance and the task's input shapes."""
        super().accepts(request, classifier=classifier, guide=guide)
        try:  # a flow path refuses the reverse-SDE samplers, before anything is compiled
            sampling.check_serves(request.sampler or self.config.sampling.method, self.sde)
        except ValueError as err:
            raise RequestError(f"--sampler: {err}") from err
        try:
            tasks.check_guidance(self._guidance(request), num_classes=self.num_classes,
                                 null_label=self.null_label)
        except ValueError as err:
            raise RequestError(str(err)) from err
        try:  # the input files, not the flags
            tasks.check_inputs(request.task, self.data_shape, request.batch, request.image,
                               request.mask)
        except ValueError as err:
            raise UserError(str(err)) from err

    def sampler_name(self, request: SampleRequest) -> str:
        return tasks.sampler_name(self.config, request.task, request.sampler)

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        """`sample(params, key, labels=request.labels, classifier_params=None, image=
        request.image, mask=request.mask, guide_params=None) -> (x in [0, 1], nfe)` of
        `request.batch` samples, compiled once; `diffusion.tasks` assembles it.

        Labels (conditional models): one int or (num,), None: 0..K-1 cycling.
        `request.guidance_scale` w (None: `sampling.guidance_scale`): classifier-free
        guidance (1 + w) s(x, y) - w s(x, null). `classifier` (a noise-classifier family,
        `classifier_params` at the call): classifier / discriminator guidance with
        `request.classifier_scale` (None: 1). `guide` (a weaker model of this kind,
        `guide_params` at the call): autoguidance (1 + W) s - W s_guide, W =
        `request.autoguidance_scale` (None: 1). nfe counts score evaluations (a guided step
        counts one; classifier gradients are not counted). Refusals are UserErrors raised
        here, before any compile.
        """
        self.accepts(request, classifier=classifier, guide=guide)
        num, task = request.batch, request.task
        w = self._guidance(request)
        try:
            if classifier is not None:
                if base.GUIDE not in classifier.capabilities:
                    raise ValueError(f"a {type(classifier).__name__} cannot guide a model")
                tasks.check_classifier(classifier, self.data_shape, self.num_classes)
            if guide is not None:
                self._check_guide(guide, w)
        except ValueError as err:
            raise UserError(str(err)) from err
        try:
            draw = tasks.task_sampler(self.config, self.sde, (num, *self.data_shape), task,
                                      name=request.sampler, steps=request.steps,
                                      edit_strength=request.edit_strength)
        except (TypeError, ValueError) as err:
            raise RequestError(f"{'' if task == 'sample' else task + ' '}sampler: {err}") \
                from err
        label_classes = self.num_classes or (classifier.num_classes if classifier else 0)
        scale = 1.0 if request.classifier_scale is None else request.classifier_scale
        run = tasks.build(
            draw, num, self.data_shape, task,
            score=lambda params, labels: self._guided_score_fn(params, labels, w),
            to_output=self.to_unit_range,
            draw_labels=self.clusters.draw if self.clusters else None,
            guide_score=guide and (lambda p, labels: guide._guided_score_fn(p, labels, 0.0)),
            guide_scale=(1.0 if request.autoguidance_scale is None
                         else request.autoguidance_scale),
            classifier_guide=classifier and (
                lambda score_fn, p, labels: classifier.guide(score_fn, p, labels, scale)))

        def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
                   guide_params=None):
            labels = common.sample_labels(request.labels if labels is None else labels, num,
                                          label_classes)
            if (classifier is None) != (classifier_params is None):
                raise UserError("classifier_params go with a classifier given to make_sampler")
            if (guide is None) != (guide_params is None):
                raise UserError("guide_params go with a guide given to make_sampler")
            return run(params, key, labels, classifier_params, guide_params,
                       request.image if image is None else image,
                       request.mask if mask is None else mask)

        return sample

    def _check_guide(self, guide, guidance: float) -> None:
        """ValueError unless `guide` can autoguide this model (a subclass adds checks)."""
        tasks.check_guide(guide, self, guidance)

    def _guided_score_fn(self, params, labels, guidance_scale: float):
        """The model's score for `labels` (none if unconditional), classifier-free guided."""
        if not self.is_conditional:
            return self.score_fn(params, labels=labels if self.clusters else None)
        return tasks.guided_score(lambda y: self.score_fn(params, labels=y), labels,
                                  guidance_scale, self.null_label)

    def _plain_sampler(self, shape, name: str | None, steps: int | None):
        return tasks.plain_sampler(self.config, self.sde, shape, name, steps)

    def make_log_likelihood(self, **options):
        """A jitted `log_likelihood(params, key, x) -> (logp (B,), nfe)` in nats, for data
        `x` in the model's data space, by the probability-flow ODE (options: those of
        `diffusion.likelihood.get_likelihood_fn`: divergence, eps, solver, rtol, atol,
        max_steps, num_probes). `key` draws the Hutchinson probes. Bad options fail here,
        before any compile."""
        if base.LIKELIHOOD not in self.capabilities:
            raise UserError(self.refusal([(base.LIKELIHOOD, "likelihood")]))
        likelihood_fn = likelihood.get_likelihood_fn(self.sde, **options)

        @jax.jit
        def log_likelihood(params, key, x):
            logp, _, nfe = likelihood_fn(key, self.score_fn(params), x)
            return logp, nfe

        return log_likelihood

    @property
    def is_image_data(self) -> bool:
        return len(self.data_shape) == 3

    def to_unit_range(self, x: jax.Array) -> jax.Array:
        """Images to [0, 1]; 2-D toy points are returned as they are."""
        if not self.is_image_data:
            return x
        return common.to_unit_range(x, self.config.data.centered)

