"""Shared fixtures: real tiny transformers models built from configs (no downloads)."""

from __future__ import annotations

import os

import pytest

# Keep every test off the network and out of the user's real cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session", autouse=True)
def _redline_cache(tmp_path_factory):
    """One cache dir per test session: the demo model is trained at most once per run."""
    if "REDLINE_CACHE_DIR" not in os.environ:
        os.environ["REDLINE_CACHE_DIR"] = str(tmp_path_factory.mktemp("redline-cache"))
    yield


def make_tiny_qwen2(tied: bool = True, layers: int = 2, seed: int = 0):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    return Qwen2ForCausalLM(config).eval()


def make_tiny_llama(seed: int = 0, vocab_size: int = 300):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=False,
    )
    return LlamaForCausalLM(config).eval()


def make_tiny_gpt2(seed: int = 0):
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(vocab_size=300, n_embd=32, n_layer=2, n_head=4, n_positions=128)
    return GPT2LMHeadModel(config).eval()


@pytest.fixture
def tiny_qwen2():
    """A tied Qwen2 causal LM (embed_tokens.weight is lm_head.weight)."""
    return make_tiny_qwen2(tied=True)


@pytest.fixture
def tiny_qwen2_untied():
    return make_tiny_qwen2(tied=False)


@pytest.fixture
def tiny_llama():
    return make_tiny_llama()


@pytest.fixture
def tiny_gpt2():
    return make_tiny_gpt2()
