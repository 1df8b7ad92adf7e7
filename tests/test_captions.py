"""data/captions.py and `config.data.captions`: the caption bank, held-out wording, and the
captions the grain pipeline serves (same images, deterministic, resumable)."""

from __future__ import annotations

import json
import re

import ml_collections
import numpy as np
import pytest

from data import captions, pipeline
from data.errors import DataError
from errors import UserError
from tests.batches import assert_batches_equal

WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
BATCH = 16


def make_config(**overrides) -> ml_collections.ConfigDict:
    # data_dir None: $TFDS_DATA_DIR, a test-private folder (tests/conftest.py) where the
    # digits are prepared on first use.
    config = ml_collections.ConfigDict(
        {
            "dataset": "digits",
            "image_size": 8,
            "num_channels": 1,
            "centered": True,
            "random_flip": True,
            "uniform_dequantization": True,
            "data_dir": None,
            "captions": True,
        }
    )
    config.update(overrides)
    return config


def take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def tokens(text: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", text.lower()))


@pytest.mark.parametrize("split", captions.SPLITS)
def test_bank_layout(split):
    count = len(captions.templates(split))
    bank = captions.bank(split)
    assert len(bank) == 10 * count
    assert len(set(bank)) == len(bank)  # no two templates give the same caption
    for digit in range(10):
        prompts = captions.prompts_for(digit, split)
        assert len(prompts) == count
        for index, template in enumerate(captions.templates(split)):
            row = digit * count + index
            assert bank[row] == prompts[index] == captions.caption(digit, template)
            assert captions.digit_of_row(row, split) == digit
            assert type(captions.digit_of_row(np.int32(row), split)) is int
    rows = np.arange(len(bank)).reshape(10, count)
    mapped = captions.digit_of_row(rows, split)
    assert mapped.dtype == np.int32 and mapped.shape == rows.shape
    np.testing.assert_array_equal(mapped, np.arange(10)[:, None].repeat(count, axis=1))
    assert captions.bank() == captions.bank("train")
    assert 10 <= len(captions.templates("train")) <= 12
    assert 5 <= len(captions.templates("heldout")) <= 6


def test_caption_fills_numeral_and_word():
    assert captions.caption(7, "{digit} or {word}") == "7 or seven"
    assert captions.caption(0, "the digit {word}") == "the digit zero"


@pytest.mark.parametrize("split", captions.SPLITS)
def test_every_caption_names_its_digit_only(split):
    names = set(WORDS) | {str(d) for d in range(10)}
    for row, text in enumerate(captions.bank(split)):
        digit = captions.digit_of_row(row, split)
        named = tokens(text) & names
        assert named and named <= {str(digit), WORDS[digit]}, (row, text)
        assert not re.search(r"\ba (eight|8)\b", text), text  # "an eight", not "a eight"
    # Both forms are used: some templates give the numeral, some the word.
    assert any("{digit}" in t for t in captions.templates(split))
    assert any("{word}" in t for t in captions.templates(split))


def test_heldout_wording_is_not_in_training():
    train, heldout = captions.templates("train"), captions.templates("heldout")
    assert not set(train) & set(heldout)
    assert not set(captions.bank("train")) & set(captions.bank("heldout"))
    train_words = set().union(*(tokens(t) for t in train))
    for template in heldout:
        assert all(template != t for t in train)
        # At least one word that no training caption contains: unseen wording.
        assert tokens(template) - train_words - {"digit", "word"}, template


def test_bad_arguments():
    with pytest.raises(ValueError, match=r"unknown caption split 'test'.*'train', 'heldout'"):
        captions.templates("test")
    with pytest.raises(ValueError, match="unknown caption split"):
        captions.bank("valid")
    with pytest.raises(ValueError, match="unknown caption split"):
        captions.prompts_for(3, "eval")
    for digit in (-1, 10, 2.0, True):
        with pytest.raises(ValueError, match="digit"):
            captions.caption(digit, "{digit}")
    size = len(captions.bank("train"))
    for row in (-1, size, np.array([0, size]), 1.5):
        with pytest.raises(ValueError, match="caption rows"):
            captions.digit_of_row(row)


@pytest.mark.parametrize("dataset", ["cifar10", "toy_gmm", "synthetic", "celeb_a"])
def test_datasets_without_captions_are_refused(dataset):
    message = (
        f"data.captions: captions exist for the digit datasets ('digits', 'mnist'), not '{dataset}'"
    )
    with pytest.raises(DataError) as info:
        captions.check_dataset(dataset)
    assert str(info.value) == message
    assert isinstance(info.value, UserError)
    config = make_config(dataset=dataset, image_size=32, num_channels=3)
    for build in (
        lambda: pipeline.get_info(config),
        lambda: pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=0),
        lambda: pipeline.make_eval_iterator(config, batch_size=BATCH),
    ):
        with pytest.raises(DataError) as info:
            build()
        assert str(info.value) == message and "\n" not in message
    captions.check_dataset("digits")
    captions.check_dataset("mnist")
    captions.check_dataset("mnist:3.0.1")
    # Without captions those datasets are served as before (the toy one here).
    pipeline.get_info(make_config(dataset="toy_gmm", captions=False))


def test_train_captions_name_the_labels_and_keep_the_images():
    plain = take(
        pipeline.make_train_iterator(make_config(captions=False), global_batch_size=BATCH, seed=3),
        5,
    )
    captioned = take(
        pipeline.make_train_iterator(make_config(), global_batch_size=BATCH, seed=3), 5
    )
    rows = []
    for off, on in zip(plain, captioned, strict=True):
        assert sorted(off) == ["image", "label"]
        assert sorted(on) == ["caption", "image", "label"]
        # Bit-identical flips and dequantization noise: the caption is drawn last.
        np.testing.assert_array_equal(on["image"], off["image"])
        np.testing.assert_array_equal(on["label"], off["label"])
        assert on["caption"].dtype == np.int32 and on["caption"].shape == (BATCH,)
        np.testing.assert_array_equal(captions.digit_of_row(on["caption"]), on["label"])
        rows.append(on["caption"] % len(captions.templates("train")))
    # The template is drawn per example, not fixed: several are used in 80 examples.
    assert len(np.unique(np.concatenate(rows))) > 5


def test_train_captions_are_deterministic_and_resume_exactly():
    config = make_config()
    it = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=11)
    take(it, 2)
    state = json.loads(json.dumps(it.get_state()))
    expected = take(it, 4)
    restored = pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=11)
    restored.set_state(state)
    assert_batches_equal(take(restored, 4), expected)

    fresh = take(pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=11), 6)
    assert_batches_equal(fresh[2:], expected)
    other = take(pipeline.make_train_iterator(config, global_batch_size=BATCH, seed=12), 6)
    assert any(
        not np.array_equal(a["caption"], b["caption"]) for a, b in zip(fresh, other, strict=True)
    )


def test_eval_batches_get_captions():
    config = make_config(random_flip=False)
    batches = take(pipeline.make_eval_iterator(config, batch_size=BATCH, seed=1), 3)
    plain = take(
        pipeline.make_eval_iterator(make_config(captions=False), batch_size=BATCH, seed=1), 3
    )
    again = take(pipeline.make_eval_iterator(config, batch_size=BATCH, seed=1), 3)
    assert_batches_equal(batches, again)
    for on, off in zip(batches, plain, strict=True):
        assert sorted(on) == ["caption", "image", "label", "mask"]
        assert "caption" not in off
        np.testing.assert_array_equal(on["image"], off["image"])
        assert on["caption"].dtype == np.int32 and on["caption"].shape == (BATCH,)
        np.testing.assert_array_equal(captions.digit_of_row(on["caption"]), on["label"])
