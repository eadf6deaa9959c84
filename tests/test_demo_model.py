"""engine.demo_model: the embedded default, trained once per session and cached."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from engine import demo_model
from engine.demo_model import DEMO_VERSION, demo_config, ensure_demo_model, read_report, train_demo_model
from engine.tokenizer import VOCAB_SIZE
from tests.fixtures_demo import demo_model_dir  # noqa: F401  (session fixture)

pytestmark = pytest.mark.slow


def _state_bytes(model) -> dict[str, bytes]:
    return {k: v.detach().contiguous().view(torch.uint8).numpy().tobytes() for k, v in model.state_dict().items()}


def test_config_is_a_small_tied_byte_level_qwen2():
    config = demo_config()
    assert config.model_type == "qwen2"
    assert config.tie_word_embeddings is True
    assert VOCAB_SIZE <= config.vocab_size <= VOCAB_SIZE + 8
    assert config.num_hidden_layers == 4 and 128 <= config.hidden_size <= 192


def test_trained_model_is_saved_privately_and_beats_the_untrained_one(demo_model_dir):  # noqa: F811
    assert demo_model_dir.name == f"demo-model-v{DEMO_VERSION}"
    assert stat.S_IMODE(demo_model_dir.stat().st_mode) == 0o700
    for name in ("config.json", "model.safetensors", "tokenizer.json", "training_report.json"):
        assert stat.S_IMODE((demo_model_dir / name).stat().st_mode) == 0o600
    assert not list(demo_model_dir.glob("*.bin"))
    report = read_report(demo_model_dir)
    assert report["version"] == DEMO_VERSION and report["seed"] == 0
    assert report["perplexity_before"] > 100  # untrained: about the vocabulary size
    assert report["perplexity_after"] < report["perplexity_before"] / 10
    if not report["stopped_early"]:  # a heavily loaded machine may cut training short; the report says so
        assert report["perplexity_after"] < 12
    assert report["steps"] > 0 and report["stopped_early"] == (report["steps"] < report["steps_planned"])


def test_second_ensure_reuses_the_cache_without_training(demo_model_dir):  # noqa: F811
    weights = demo_model_dir / "model.safetensors"
    before = (weights.stat().st_mtime_ns, read_report(demo_model_dir))
    calls = []
    assert ensure_demo_model(progress=lambda *a: calls.append(a)) == demo_model_dir
    assert calls == []
    assert (weights.stat().st_mtime_ns, read_report(demo_model_dir)) == before


def test_saved_model_loads_with_its_tie(demo_model_dir):  # noqa: F811
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True, local_files_only=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight


def test_training_is_deterministic_for_a_seed():
    first, _, report = train_demo_model(seed=5, steps=3, eval_tokens=128)
    second, _, _ = train_demo_model(seed=5, steps=3, eval_tokens=128)
    other, _, _ = train_demo_model(seed=6, steps=3, eval_tokens=128)
    assert report["steps"] == 3 and not report["stopped_early"]
    assert _state_bytes(first) == _state_bytes(second)
    assert _state_bytes(first) != _state_bytes(other)
    assert first.lm_head.weight is first.model.embed_tokens.weight


def test_time_guard_stops_training_early_and_says_so():
    progress = []
    model, tokenizer, report = train_demo_model(
        steps=50, max_seconds=0.0, eval_tokens=128, progress=lambda *a: progress.append(a)
    )
    assert report["stopped_early"] is True and report["steps"] < 50
    assert progress and all(len(call) == 3 for call in progress)


RACER = textwrap.dedent(
    """
    import engine.demo_model as demo
    demo.TRAIN_STEPS = 4
    demo.EVAL_TOKENS = 128
    print(demo.ensure_demo_model())
    """
)


def test_racing_processes_both_end_with_one_valid_model(tmp_path):
    cache = tmp_path / "cache"
    broken = cache / f"demo-model-v{DEMO_VERSION}"
    broken.mkdir(parents=True)
    (broken / "config.json").write_text("{ half written")
    env = dict(os.environ, REDLINE_CACHE_DIR=str(cache))
    racers = [
        subprocess.Popen([sys.executable, "-c", RACER], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    results = [racer.communicate(timeout=240) for racer in racers]
    for racer, (out, err) in zip(racers, results):
        assert racer.returncode == 0, err
        assert out.strip() == str(broken)
    assert demo_model.is_complete(broken)
    assert read_report(broken)["steps"] == 4
    assert sorted(p.name for p in cache.iterdir() if not p.name.endswith(".lock")) == [broken.name]
