"""What every family is: the `Family` protocol, the capability names a family declares, and
`FamilyBase`, the defaults the families share (no statistics, no-op `prepare_training`,
the capability check of a `SampleRequest`).

Building a family reads nothing. What it needs of the data or of other runs (k-means
clusters, a latent model's VAE weights and latent scale) are its *statistics*: a nested
dict of numpy arrays that `compute_statistics(config)` reads once, when a run starts, and
that every checkpoint of the run stores, so that resuming, sampling and evaluating read
them from the checkpoint and never from the data again.

A family declares what it can do in `capabilities` (a frozenset of the names below);
callers test `LIKELIHOOD in family.capabilities`, never `hasattr`. `accepts(request)`
refuses, with one RequestError naming the flags, what a request asks that the family cannot
do.
"""

import types
from typing import Any, Protocol, runtime_checkable

import jax
import ml_collections

from errors import RequestError
from training.families.request import SampleRequest
from training.state import TrainState

SAMPLE = "sample"  # draws samples (make_sampler)
SAMPLERS = "samplers"  # an iterative sampler: --sampler and --steps choose it
LIKELIHOOD = "likelihood"  # make_log_likelihood(**options): exact log p(x) (nats)
BOUNDS = "bounds"  # make_bounds(k): ELBO and IWAE bounds on log p(x) (a VAE)
GUIDANCE = "guidance"  # classifier-free guidance (--guidance_scale)
CLASSIFIER_GUIDANCE = "classifier_guidance"  # guided by a noise classifier's gradients
AUTOGUIDANCE = "autoguidance"  # guided by a weaker model of its own kind
INPAINT = "inpaint"
COLORIZE = "colorize"
SDEDIT = "sdedit"
GUIDE = "guide"  # a noise classifier: guide(score_fn, params, labels, scale)
PROMPTS = "prompts"  # steered by text prompts (request.prompts)
# Feed-forward style transfer: make_stylizer() -> stylize(params, content, style, alpha),
# and snapshot_rows(params) for the loop's snapshot grid (content, style and result rows).
STYLIZE = "stylize"
CAPABILITIES = (SAMPLE, SAMPLERS, LIKELIHOOD, BOUNDS, GUIDANCE, CLASSIFIER_GUIDANCE,
                AUTOGUIDANCE, INPAINT, COLORIZE, SDEDIT, GUIDE, PROMPTS, STYLIZE)


@runtime_checkable
class Family(Protocol):
    """What the training loop, sampling and evaluation rely on of a model family."""

    config: ml_collections.ConfigDict
    data_shape: tuple[int, ...]
    capabilities: frozenset[str]
    num_classes: int  # 0: unconditional
    statistics: dict  # what compute_statistics returned; stored in every checkpoint

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict: ...

    @property
    def is_image_data(self) -> bool: ...

    def prepare_training(self) -> None: ...

    def init_state(self, key: jax.Array) -> TrainState: ...

    def train_step(self, state: TrainState, batch: dict) -> tuple[TrainState, dict]: ...

    def eval_step(self, state: TrainState, batch: dict, key: jax.Array) -> dict: ...

    def sample_params(self, state: TrainState, use_ema: bool = True) -> Any: ...

    def accepts(self, request: SampleRequest, *, classifier=None, guide=None) -> None: ...

    def for_request(self, request: SampleRequest) -> "Family": ...

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None): ...

    def sampler_name(self, request: SampleRequest) -> str: ...

    def to_unit_range(self, x: jax.Array) -> jax.Array: ...


def asked(request: SampleRequest, *, classifier=None, guide=None) -> list[tuple[str, str]]:
    """(capability, the flag that asks for it) for everything beyond plain sampling."""
    wants = [
        (SAMPLERS, "--sampler", request.sampler is not None),
        (SAMPLERS, "--steps", request.steps is not None),
        (GUIDANCE, "--guidance_scale", bool(request.guidance_scale)),
        (CLASSIFIER_GUIDANCE, "classifier guidance",
         classifier is not None or request.classifier_scale is not None),
        (AUTOGUIDANCE, "autoguidance",
         guide is not None or request.autoguidance_scale is not None),
        (request.task, f"task {request.task!r}", request.task != "sample"),
        (SDEDIT, "--edit_strength", request.edit_strength is not None),
    ]
    return [(capability, flag) for capability, flag, on in wants if on]


class FamilyBase:
    """Defaults of the protocol's members that most families share."""

    capabilities: frozenset[str] = frozenset()
    num_classes: int = 0
    statistics: dict = types.MappingProxyType({})

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """What the family needs of the data or of other runs, as a nested dict of numpy
        arrays (the I/O of a run's start; nothing here)."""
        return {}

    def prepare_training(self) -> None:
        """Reads inputs only training needs (UserError before the loop writes anything);
        nothing here."""

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        """The one-line message for the asked-for (capability, flag) pairs it lacks."""
        if missing[0][0] in (LIKELIHOOD, BOUNDS):
            return (f"bits/dim needs a likelihood; model family "
                    f"{self.config.model.family!r} has none")
        return (f"model.family={self.config.model.family!r} cannot do "
                f"{', '.join(flag for _, flag in missing)}")

    def accepts(self, request: SampleRequest, *, classifier=None, guide=None) -> None:
        """RequestError naming what `request` asks that this family cannot do."""
        if SAMPLE not in self.capabilities:
            raise RequestError(self.refusal([(SAMPLE, "sampling")]))
        if request.prompts is not None and PROMPTS not in self.capabilities:
            raise RequestError(f"--prompt needs a model trained on text (model.family="
                               f"'text_diffusion'); this one is model.family="
                               f"{self.config.model.family!r}")
        missing = [(capability, flag)
                   for capability, flag in asked(request, classifier=classifier, guide=guide)
                   if capability not in self.capabilities]
        if missing:
            raise RequestError(self.refusal(missing))
        self.check_labels(request, classifier=classifier)

    def for_request(self, request: SampleRequest) -> "FamilyBase":
        """The model that draws `request` (itself; a text model: the one conditioned on
        the request's prompts)."""
        return self

    def check_labels(self, request: SampleRequest, *, classifier=None) -> None:
        """RequestError for a class label the model (or its classifier) cannot draw."""
        label = request.labels
        if label is None:
            return
        guided = classifier is not None or request.classifier_scale is not None
        if not self.num_classes and not guided:
            raise RequestError("--class_label needs a class-conditional model or a classifier; "
                               "this model is unconditional (model.num_classes=0)")
        classes = self.num_classes or (classifier.num_classes if classifier is not None
                                       else 0)
        if label < 0 or (classes and label >= classes):
            raise RequestError(f"--class_label {label} is out of range: the classes are "
                               f"0..{classes - 1 if classes else 'K-1'}")

    def sampler_name(self, request: SampleRequest) -> str:
        """What the samples file records as the sampler."""
        return type(self).__name__

    @property
    def is_image_data(self) -> bool:
        return True

    def to_unit_range(self, x: jax.Array) -> jax.Array:
        """Images from the data space to [0, 1]."""
        from training.families.common import to_unit_range

        return to_unit_range(x, self.config.data.centered)


class OneCallFamily(FamilyBase):
    """A family that draws each sample in one network call (GAN, VAE)."""

    kind = "one-call model"

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        if missing[0][0] in (LIKELIHOOD, BOUNDS):
            return super().refusal(missing)
        return (f"a {self.kind} draws each sample in one generator call: "
                f"{', '.join(flag for _, flag in missing)} do(es) not apply")
