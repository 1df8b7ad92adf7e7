"""Text-to-image diffusion: a score-SDE diffusion model steered by a text prompt, the way
DALL-E 2, Imagen and Stable Diffusion are.

A frozen language model (`networks.text_encoder`, all-MiniLM-L6-v2 by default) reads each
prompt once. Its pooled sentence embedding joins the U-Net's time embedding and
cross-attention reads its token states at `model.text_attn_resolutions`. Training reads
captions from the data pipeline (`data.captions`: each batch row's `caption` is a row of
the training caption bank, `data.captions.bank`); the bank's encodings are the family's
statistics, computed once when the run starts and stored in its checkpoints, so training
never runs the encoder. With `training.prompt_dropout` p a caption is replaced by the
empty prompt with probability p, so that the one network is also the unconditional model
that classifier-free guidance on the prompt needs (`--guidance_scale`).

Inside, a prompt is a row of a `PromptTable` (the empty prompt is its last row), so the
class-conditional machinery of the diffusion family (label dropout, guidance, labels
cycling over classes) serves prompts unchanged: a request with P prompts is drawn by
`for_request(request)`, the same model with a table of those P prompts as its classes.
Without prompts it draws one training caption per digit, in turn, as a class-conditional
model draws its classes.
"""

import copy
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from data import captions
from errors import RequestError, UserError
from networks import text_encoder
from training.families import base
from training.families.diffusion import DiffusionFamily
from training.families.request import SampleRequest


@dataclasses.dataclass(frozen=True)
class PromptTable:
    """Encoded prompts, the empty prompt last: `tokens` (R, L, D) token states, `mask`
    (R, L) True on tokens, `pooled` (R, D) sentence embeddings."""

    tokens: jax.Array
    mask: jax.Array
    pooled: jax.Array

    @property
    def null_row(self) -> int:
        """The row of the empty prompt."""
        return int(self.pooled.shape[0]) - 1

    @property
    def width(self) -> int:
        return int(self.pooled.shape[-1])

    def rows(self, ids: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(tokens, mask, pooled) of the rows `ids` (B,): the network's `text` input."""
        return self.tokens[ids], self.mask[ids], self.pooled[ids]

    @classmethod
    def from_arrays(cls, arrays: dict) -> "PromptTable":
        return cls(jnp.asarray(arrays["tokens"], jnp.float32),
                   jnp.asarray(arrays["mask"]).astype(bool),
                   jnp.asarray(arrays["pooled"], jnp.float32))


def encode_prompts(encoder: text_encoder.TextEncoder, prompts: tuple[str, ...]) -> dict:
    """The arrays of a `PromptTable` of `prompts` and the empty prompt (numpy, for a
    checkpoint). UserError for a prompt longer than the encoder reads."""
    rows = [*prompts, ""]
    ids, mask = encoder.tokenize(rows)
    return {"tokens": np.asarray(encoder.hidden_states(ids, mask), np.float32),
            "mask": np.asarray(mask, np.int32),
            "pooled": np.asarray(encoder.encode(rows), np.float32)}


def _encoder(config: ml_collections.ConfigDict) -> text_encoder.TextEncoder:
    return text_encoder.load(config.text.encoder or None)


class TextDiffusionFamily(DiffusionFamily):
    """`model.family='text_diffusion'`: `table` (the training captions' PromptTable),
    `prompts` (None, or the prompts of a `for_request` model) and `default_prompts`."""

    def __init__(self, config: ml_collections.ConfigDict, statistics: dict | None = None):
        """`statistics`: what `compute_statistics(config)` returned (the captions'
        encodings)."""
        statistics = dict(statistics or {})
        self._check_config(config)
        if "captions" not in statistics:
            raise ValueError("a text diffusion model is built from its statistics; "
                             "'captions' missing (TextDiffusionFamily.compute_statistics "
                             "encodes them)")
        self.table = PromptTable.from_arrays(statistics["captions"])
        self.prompts: tuple[str, ...] | None = None
        self.default_prompts = tuple(captions.prompts_for(d, "train")[0]
                                     for d in range(captions.NUM_CLASSES))
        super().__init__(config, statistics)
        self.null_label = self.table.null_row
        self.class_dropout = float(config.training.prompt_dropout)
        self._prompted: dict[tuple[str, ...], TextDiffusionFamily] = {}

    @staticmethod
    def _check_config(config: ml_collections.ConfigDict) -> None:
        if config.model.num_classes:
            raise UserError("model.family='text_diffusion' is steered by prompts, not "
                            f"labels: set model.num_classes=0 (got {config.model.num_classes})")
        if not config.data.captions:
            raise UserError("model.family='text_diffusion' trains on captions: set "
                            "data.captions=True")
        captions.check_dataset(config.data.dataset)
        dropout = float(config.training.prompt_dropout)
        if not 0.0 <= dropout < 1.0:
            raise UserError(f"training.prompt_dropout must lie in [0, 1), got {dropout}")

    @classmethod
    def compute_statistics(cls, config: ml_collections.ConfigDict) -> dict:
        """The encodings of the training caption bank (and of the empty prompt)."""
        cls._check_config(config)
        return {"captions": encode_prompts(_encoder(config), captions.bank("train"))}

    # -- the diffusion family's hooks: text in place of labels ------------------------

    @property
    def is_conditional(self) -> bool:
        return True

    def _network_config(self, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        net_config = config.copy_and_resolve_references()
        with net_config.unlocked():
            net_config.model.text_dim = self.table.width
        return net_config

    def _net_fn(self, params, *, train: bool, key: jax.Array | None = None,
                labels: jax.Array | int | None = None):
        """`net_fn(x, c_noise)` for the prompts of the table's rows `labels` (B,) or one
        row for the batch (None: the empty prompt)."""
        model = nnx.merge(self.graphdef, params, self._rest)
        rows = self.table.null_row if labels is None else labels
        table = self.table

        def net_fn(x, c_noise):
            ids = jnp.broadcast_to(jnp.asarray(rows, jnp.int32), x.shape[:1])
            return model(x, c_noise, train=train, key=key, text=table.rows(ids))

        return net_fn

    def batch_labels(self, batch: dict) -> jax.Array:
        """The batch's caption rows (prompt dropout turns them into the empty prompt's)."""
        return batch["caption"].astype(jnp.int32)

    # -- sampling: the prompts are the classes ----------------------------------------

    def _capabilities(self) -> frozenset[str]:
        return frozenset({base.SAMPLE, base.SAMPLERS, base.GUIDANCE, base.PROMPTS})

    def refusal(self, missing: list[tuple[str, str]]) -> str:
        if missing[0][0] == base.LIKELIHOOD:
            return ("bits/dim needs the likelihood of the images; a text-conditional model "
                    "has no unconditional likelihood here")
        return ("a text-conditional model samples from prompts (--prompt, --prompts_file, "
                f"--guidance_scale); it cannot do {', '.join(f for _, f in missing)}")

    def accepts(self, request: SampleRequest, *, classifier=None, guide=None) -> None:
        base.FamilyBase.accepts(self, request, classifier=classifier, guide=guide)
        w = self._guidance(request)
        if w > 0 and self.class_dropout == 0:
            raise RequestError("--guidance_scale needs a model trained with "
                               "training.prompt_dropout > 0 (the empty prompt); this one has none")

    def for_request(self, request: SampleRequest) -> "TextDiffusionFamily":
        """This model with `request.prompts` (default: `default_prompts`) as its classes:
        sample i is drawn for prompt i mod P."""
        prompts = request.prompts or self.default_prompts
        if prompts == self.prompts:
            return self
        if prompts not in self._prompted:
            prompted = copy.copy(self)
            prompted.table = PromptTable.from_arrays(encode_prompts(_encoder(self.config),
                                                                    prompts))
            prompted.prompts = prompts
            prompted.num_classes = len(prompts)
            prompted.null_label = prompted.table.null_row
            prompted._prompted = {}
            self._prompted[prompts] = prompted
        return self._prompted[prompts]

    def make_sampler(self, request: SampleRequest, *, classifier=None, guide=None):
        """The diffusion family's sampler, for the request's prompts (labels: rows of
        those prompts, cycling by default)."""
        drawn_by = self.for_request(request)
        if drawn_by is not self:
            return drawn_by.make_sampler(request, classifier=classifier, guide=guide)
        return super().make_sampler(request, classifier=classifier, guide=guide)
