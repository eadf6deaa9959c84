"""Shared fixtures: real tiny transformers models built from configs (no downloads)."""

from __future__ import annotations

import os

import pytest

# Keep every test off the network and out of the user's real cache.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

XDIST_WORKER = os.environ.get("PYTEST_XDIST_WORKER")  # "gw0", "gw1", ... in a pytest-xdist worker
MAX_WORKERS = 4  # `-n auto` beyond this buys little: the tests start engines and processes of their own

# One torch thread per test process (and the engines and processes it starts): the models are tiny, and
# on a loaded machine torch's extra threads spin at barriers (a 200-step fine-tune ran 10-25x slower with
# two threads than with one on 2 busy cores). xdist workers already fill the cores, so they always get one;
# a serial run keeps an OMP_NUM_THREADS the caller chose.
if XDIST_WORKER:
    os.environ["OMP_NUM_THREADS"] = "1"
else:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def pytest_xdist_auto_num_workers(config):
    """`-n auto`: one worker per usable core, at most MAX_WORKERS (PYTEST_XDIST_AUTO_NUM_WORKERS overrides)."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return None  # xdist's own hook reads it
    return max(1, min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1,
                      MAX_WORKERS))


@pytest.fixture(scope="session", autouse=True)
def _redline_cache(tmp_path_factory):
    """Per-run directories instead of the user's: cache, data (runs) and runtime (sockets, engine registry).

    The cache (the trained demo model) is shared by every xdist worker of the run, so the model is
    trained once per run (engine.demo_model locks its creation); data and runtime are per worker, so
    one worker's runs and registered engines never show up in another's.
    """
    own = tmp_path_factory.getbasetemp()
    run_root = own.parent if XDIST_WORKER else own
    if "REDLINE_CACHE_DIR" not in os.environ:
        cache = run_root / "redline-cache"
        cache.mkdir(exist_ok=True)
        os.environ["REDLINE_CACHE_DIR"] = str(cache)
    os.environ["REDLINE_HOME"] = str(tmp_path_factory.mktemp("redline-home"))
    os.environ["XDG_RUNTIME_DIR"] = str(tmp_path_factory.mktemp("xdg-runtime"))
    _forget_readline_terminal_size()
    yield


def _forget_readline_terminal_size():
    """Drop the COLUMNS=80/LINES=24 that importing readline (pytest's debugger does) exports without a tty.

    readline sets them in the C environment, which every child process inherits; an xdist worker even
    starts with them in os.environ, and a console spawned there in a 48x160 pty then draws 80x24 and
    hides its alerts. Tests give terminal sizes explicitly, so neither variable is wanted.
    """
    for name in ("COLUMNS", "LINES"):
        os.environ.pop(name, None)
        os.unsetenv(name)


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
