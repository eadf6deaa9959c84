"""safe_modification_experiment: the guide's template, run for real in a temporary cwd."""

from __future__ import annotations

import pytest

from engine.experiment import safe_modification_experiment
from tests.conftest import make_tiny_qwen2


def _score(model) -> dict:
    """A deterministic stand-in metric: smaller output-head weights read as 'better perplexity'."""
    return {"perplexity": float(model.lm_head.weight.detach().abs().sum())}


def _state(model) -> dict:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _same(a: dict, b: dict) -> bool:
    import torch

    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _scale(factor: float):
    import torch

    def modify(model):
        with torch.no_grad():
            model.lm_head.weight.mul_(factor)

    return modify


def _categories(tmp_path, name: str) -> list[str]:
    from engine.memory import MemorySystem

    memory = MemorySystem(tmp_path / "data" / "memory" / name)
    try:
        return [o.category for o in memory.observations.query()]
    finally:
        memory.close()


def test_improvement_is_kept_with_a_success_checkpoint(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = make_tiny_qwen2()
    result = safe_modification_experiment(model, _scale(0.5), _score, "shrink_001")
    assert result["success"] is True and result["improvement"] == pytest.approx(50.0, rel=1e-4)
    assert result["checkpoint"].startswith("checkpoint_")
    out = capsys.readouterr().out
    assert "🚀 Starting experiment: shrink_001" in out and "Performance change: +50.00%" in out
    assert f"✓ Modification successful - checkpoint: {result['checkpoint']}" in out
    assert (tmp_path / "data" / "checkpoints" / "manifests" / f"{result['checkpoint']}.json").exists()
    assert sorted(_categories(tmp_path, "shrink_001")) == ["baseline", "success"]


def test_degradation_is_rolled_back(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = make_tiny_qwen2()
    before = _state(model)
    result = safe_modification_experiment(model, _scale(2.0), _score, "grow_001")
    assert result == {"success": False, "improvement": pytest.approx(-100.0, rel=1e-4)}
    assert _same(_state(model), before)
    assert model.lm_head.weight is model.model.embed_tokens.weight  # the tie survived the restore
    assert "✗ Modification unsuccessful - rolled back" in capsys.readouterr().out
    assert sorted(_categories(tmp_path, "grow_001")) == ["baseline", "failure"]


def test_exception_rolls_back(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = make_tiny_qwen2()
    before = _state(model)

    def half_done(model):
        _scale(3.0)(model)
        raise RuntimeError("modification crashed halfway")

    result = safe_modification_experiment(model, half_done, _score, "crash_001")
    assert result == {"success": False, "error": "modification crashed halfway"}
    assert _same(_state(model), before)
    out = capsys.readouterr().out
    assert "🚨 EXCEPTION: modification crashed halfway" in out and "Emergency rollback complete" in out
    assert sorted(_categories(tmp_path, "crash_001")) == ["baseline", "error"]


def test_critical_health_is_an_exception_path(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    model = make_tiny_qwen2()
    before = _state(model)

    def poison(model):
        with torch.no_grad():
            model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")

    result = safe_modification_experiment(model, poison, _score, "nan_001")
    assert result["success"] is False and result["error"].startswith("Critical safety issue")
    assert _same(_state(model), before)


def test_explicit_directories(tmp_path):
    model = make_tiny_qwen2()
    result = safe_modification_experiment(model, _scale(0.9), _score, "dirs", checkpoint_dir=tmp_path / "cp",
                                          memory_dir=tmp_path / "mem")
    assert result["success"] and (tmp_path / "cp" / "manifests").is_dir() and (tmp_path / "mem").is_dir()
