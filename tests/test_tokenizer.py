"""engine.tokenizer: a byte-level tokenizer that behaves as an ordinary transformers tokenizer."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoTokenizer

from engine.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE, byte_tokenizer
from tests.conftest import make_tiny_qwen2

SAMPLES = [
    "plain ASCII text.",
    "Größe, naïve café — “quotes” ✓ 日本語 🙂",
    "\x00\x01\t\n\r \x7f spaces   and tabs\t\t",
    "",
]


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


@pytest.mark.parametrize("text", SAMPLES)
def test_ids_are_the_utf8_bytes_and_decode_round_trips(tokenizer, text):
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tokenizer.decode(ids) == text


def test_specials(tokenizer):
    assert len(tokenizer) == VOCAB_SIZE
    assert tokenizer.eos_token_id == EOS_TOKEN_ID and tokenizer.pad_token_id == PAD_TOKEN_ID
    ids = [EOS_TOKEN_ID, *b"hi", PAD_TOKEN_ID]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hi"
    assert tokenizer("<|endoftext|>")["input_ids"] == [EOS_TOKEN_ID]


def test_batch_padding(tokenizer):
    batch = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[97, 98, PAD_TOKEN_ID, PAD_TOKEN_ID], [97, 98, 99, 100]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]


def test_save_and_load_offline_without_custom_code(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "auto_map" not in config
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for text in SAMPLES:
        assert loaded(text)["input_ids"] == tokenizer(text)["input_ids"]
        assert loaded.decode(loaded(text)["input_ids"]) == text
    assert (loaded.eos_token_id, loaded.pad_token_id) == (EOS_TOKEN_ID, PAD_TOKEN_ID)


def test_model_max_length_is_kept(tmp_path):
    tokenizer = byte_tokenizer(model_max_length=128)
    tokenizer.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path, local_files_only=True).model_max_length == 128


def test_generate_single_and_left_padded_batch(tokenizer):
    model = make_tiny_qwen2()
    single = tokenizer("Hello", return_tensors="pt")
    out = model.generate(**single, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (1, 10)
    assert out[0, :5].tolist() == list(b"Hello")

    tokenizer.padding_side = "left"
    try:
        batch = tokenizer(["Hi", "Hello"], padding=True, return_tensors="pt")
    finally:
        tokenizer.padding_side = "right"
    out = model.generate(**batch, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape == (2, 9)
    alone = model.generate(**tokenizer("Hi", return_tensors="pt"), max_new_tokens=4, do_sample=False,
                           pad_token_id=tokenizer.pad_token_id)
    assert torch.equal(out[0, -4:], alone[0, -4:])
