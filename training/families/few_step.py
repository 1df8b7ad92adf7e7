"""What the few-step students share (consistency models, progressive distillation): they
draw plain, unconditional samples by their one sampler in `--steps` network calls, refuse
everything else in one line, and train one network with the diffusion family's keys.

`FewStepSampling` is a mixin over a `DiffusionFamily`: a subclass names its `SAMPLER` and
`KIND` and provides `_check_steps(steps, flag, error)` and `_draw(params, key, shape,
steps) -> x` (pure, in the data space).
"""

import jax
import ml_collections

from diffusion import losses
from errors import RequestError, UserError
from training.families import base, common
from training.families.request import SampleRequest


def check_unconditional(config: ml_collections.ConfigDict) -> None:
    """UserError for a class- or cluster-conditional few-step student."""
    if config.model.num_classes or config.model.self_condition_clusters:
        raise UserError(f"model.family={config.model.family!r} is unconditional: set "
                        "model.num_classes=0 and model.self_condition_clusters=0")


def step_inputs(state, batch: dict) -> tuple[jax.Array, dict]:
    """(the step's dropout key, the loss inputs: images and per-example keys), drawn for the
    whole batch so that micro-batches see the draws of the full batch."""
    dropout_key, loss_key = jax.random.split(jax.random.fold_in(state.rng, state.step))
    images = batch["image"]
    return dropout_key, {"image": images,
                         "key": losses.example_keys(loss_key, images.shape[0])}


def micro_key(dropout_key: jax.Array, accum_steps: int, index) -> jax.Array:
    """The dropout key of micro-batch `index`."""
    return dropout_key if accum_steps == 1 else jax.random.fold_in(dropout_key, index)


class FewStepSampling:
    """Sampling of a few-step student (see the module docstring)."""

    SAMPLER = ""  # the one sampler's name (--sampler, the samples file's record)
    KIND = ""  # what the refusals call the model

    def _capabilities(self) -> frozenset[str]:
        return frozenset({base.SAMPLE, base.SAMPLERS})

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        if missing[0][0] in (base.LIKELIHOOD, base.BOUNDS):
            return base.FamilyBase.refusal(self, missing)
        return (f"a {self.KIND} draws by {self.SAMPLER!r} alone: "
                f"{', '.join(flag for _, flag in missing)} do(es) not apply")

    def accepts(self, request: SampleRequest, *, classifier=None, guide=None) -> None:
        """RequestError (one line): anything beyond plain sampling, another sampler, or
        `--steps` the student does not support."""
        base.FamilyBase.accepts(self, request, classifier=classifier, guide=guide)
        if request.sampler not in (None, self.SAMPLER):
            raise RequestError(f"--sampler {request.sampler!r}: a {self.KIND} samples with "
                               f"{self.SAMPLER!r} only")
        if request.steps is not None:
            self._check_steps(request.steps, "--steps", RequestError)

    def sampler_name(self, request: SampleRequest) -> str:
        return self.SAMPLER

    def steps_of(self, request: SampleRequest) -> int:
        """The network calls a draw of `request` takes: `--steps`, else `sampling.steps`."""
        return request.steps or int(self.config.sampling.steps)

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        """`sample(params, key, labels=None, ...) -> (x in [0, 1], nfe)` of `request.batch`
        samples in `request.steps` (default `sampling.steps`) network calls, compiled once."""
        self.accepts(request, classifier=classifier, guide=guide)
        steps = self.steps_of(request)
        shape = (request.batch, *self.data_shape)

        @jax.jit
        def run(params, key):
            return self.to_unit_range(self._draw(params, key, shape, steps)), steps

        def sample(params, key, labels=None, classifier_params=None, image=None, mask=None,
                   guide_params=None):
            common.sample_labels(labels, request.batch, 0)  # unconditional: none taken
            return run(params, key)

        return sample
