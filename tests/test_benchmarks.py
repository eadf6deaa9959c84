"""engine.benchmarks: held-out perplexity, generation check, stored baseline."""

from __future__ import annotations

import math
import stat

import pytest
import torch

from engine.benchmarks import generation_check, load_baseline_metrics, run_benchmarks, save_baseline_metrics
from engine.tokenizer import byte_tokenizer
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2
from tests.fixtures_demo import demo_model, demo_model_dir  # noqa: F401  (fixtures)

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


@pytest.fixture(scope="module")
def tokenizer():
    return byte_tokenizer()


def test_deterministic_and_restores_training_mode(tokenizer):
    model = make_tiny_qwen2().train()
    first = run_benchmarks(model, tokenizer, TEXT)
    second = run_benchmarks(model, tokenizer, TEXT)
    assert model.training
    assert (first["loss"], first["perplexity"]) == (second["loss"], second["perplexity"])
    assert first["text"] == "custom" and first["finite"]


def test_loss_matches_the_model_own_loss_on_one_window(tokenizer):
    model = make_tiny_qwen2()
    text = TEXT[:100]
    result = run_benchmarks(model, tokenizer, text)
    ids = torch.tensor([list(text.encode())])
    with torch.no_grad():
        reference = model(input_ids=ids, labels=ids).loss.item()
    assert result["tokens"] == len(text) - 1 and result["windows"] == 1
    assert result["loss"] == pytest.approx(reference, rel=1e-5)
    assert result["perplexity"] == pytest.approx(math.exp(reference), rel=1e-5)


def test_windows_cover_every_token_once_whatever_the_batch(tokenizer):
    model = make_tiny_qwen2()
    one = run_benchmarks(model, tokenizer, TEXT, seq_len=50, batch_size=1)
    many = run_benchmarks(model, tokenizer, TEXT, seq_len=50, batch_size=7)
    assert one["tokens"] == many["tokens"] == len(TEXT) - 1
    assert one["loss"] == pytest.approx(many["loss"], rel=1e-6)


def test_bounded_by_max_tokens_and_model_positions(tokenizer):
    model = make_tiny_qwen2()  # max_position_embeddings=128
    result = run_benchmarks(model, tokenizer, TEXT, max_tokens=300, seq_len=512)
    assert result["tokens"] == 300
    assert result["seq_len"] == 128


@pytest.mark.parametrize("make", [make_tiny_llama, make_tiny_gpt2, make_tiny_qwen2], ids=["llama", "gpt2", "qwen2"])
def test_any_causal_lm_on_the_heldout_corpus(make, tokenizer):
    result = run_benchmarks(make(), tokenizer, max_tokens=1024)
    assert result["text"] == "heldout" and result["tokens"] == 1024
    assert 100 < result["perplexity"] < 1000  # untrained: about the vocabulary size (300)


def test_nan_and_inf_weights_give_a_non_finite_perplexity(tokenizer):
    model = make_tiny_qwen2()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
    result = run_benchmarks(model, tokenizer, TEXT)
    assert math.isnan(result["perplexity"]) and result["finite"] is False

    model = make_tiny_llama()
    with torch.no_grad():
        model.lm_head.weight[3, 3] = float("inf")
    result = run_benchmarks(model, tokenizer, TEXT)
    assert not math.isfinite(result["perplexity"]) and result["finite"] is False


def test_bad_arguments_are_clear(tokenizer):
    model = make_tiny_qwen2()
    with pytest.raises(ValueError, match="at least two tokens"):
        run_benchmarks(model, tokenizer, "x")
    with pytest.raises(ValueError, match="seq_len >= 2"):
        run_benchmarks(model, tokenizer, TEXT, seq_len=1)


@pytest.mark.slow
def test_a_damaging_change_raises_demo_perplexity(demo_model):  # noqa: F811
    model, tokenizer = demo_model
    healthy = run_benchmarks(model, tokenizer)
    assert healthy["text"] == "heldout" and healthy["perplexity"] < 15
    with torch.no_grad():  # tied: scales lm_head's logits too (MLP scaling barely hurts, RMSNorm absorbs it)
        model.model.embed_tokens.weight.mul_(3.0)
    damaged = run_benchmarks(model, tokenizer)
    assert damaged["perplexity"] > healthy["perplexity"] * 1.5


@pytest.mark.slow
def test_generation_check_on_the_demo_model(demo_model):  # noqa: F811
    model, tokenizer = demo_model
    result = generation_check(model, tokenizer)
    assert result["ok"], result
    assert result["text"].strip() and result["new_tokens"] == 24
    with torch.no_grad():
        model.model.embed_tokens.weight[ord("T")] = float("nan")
    broken = generation_check(model, tokenizer)
    assert broken["ok"] is False and "NaN" in broken["reason"]


def test_generation_check_sees_a_stuck_model(tokenizer):
    model = make_tiny_qwen2().train()
    with torch.no_grad():
        model.model.norm.weight.zero_()  # every logit 0: greedy picks token 0 forever
    result = generation_check(model, tokenizer, max_new_tokens=8)
    assert result["ok"] is False and "repeated" in result["reason"]
    assert model.training


def test_baseline_round_trip_private_file(tmp_path):
    metrics = {"perplexity": 5.5, "loss": 1.7, "tokens": 10}
    path = save_baseline_metrics(metrics, tmp_path / "run" / "baseline.json")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = load_baseline_metrics(path)
    assert {k: loaded[k] for k in metrics} == metrics and "saved_at" in loaded


def test_baseline_default_path_is_data_under_cwd(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="save_baseline_metrics"):
        load_baseline_metrics()
    path = save_baseline_metrics({"perplexity": float("nan")})
    assert path.absolute() == tmp_path / "data" / "baseline_metrics.json"
    assert math.isnan(load_baseline_metrics()["perplexity"])


def test_baseline_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="'perplexity'"):
        save_baseline_metrics({"loss": 1.0}, tmp_path / "b.json")
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_baseline_metrics(tmp_path / "broken.json")
