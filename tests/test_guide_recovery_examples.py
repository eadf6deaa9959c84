"""The guide's Emergency Procedures, scenarios 2 and 4, run as written (only imports changed).

Each test builds the state the scenario assumes (a model, a checkpointer, a
baseline), then runs the guide's block verbatim, then checks its outcome.
"""

from __future__ import annotations

import torch

from engine import benchmarks
from engine.benchmarks import load_baseline_metrics, save_baseline_metrics
from engine.checkpointing import CheckpointManager
from engine.model_manager import ModelManager
from tests.conftest import make_tiny_qwen2
from tests.fixtures_demo import demo_model, demo_model_dir  # noqa: F401  (fixtures)
from tests.test_model_manager import put_in_hub_cache


def test_scenario_2_performance_degrades(demo_model, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.chdir(tmp_path)  # the guide's data/ convention: data/baseline_metrics.json
    model, tokenizer = demo_model
    checkpointer = CheckpointManager(model, "data/checkpoints")
    baseline_id = checkpointer.save_checkpoint(metadata={"state": "baseline"})
    baseline = save_baseline_metrics(benchmarks.run_benchmarks(model, tokenizer))
    assert baseline.absolute() == tmp_path / "data" / "baseline_metrics.json"
    with torch.no_grad():  # tied: scales lm_head's logits too (MLP scaling barely hurts, RMSNorm absorbs it)
        model.model.embed_tokens.weight.mul_(3.0)

    # --- guide, Scenario 2, verbatim ---
    # 1. Stop modifications
    print("⚠️  PERFORMANCE DEGRADATION DETECTED")

    # 2. Run diagnostic
    from engine.benchmarks import run_benchmarks

    current_metrics = run_benchmarks(model, tokenizer)
    print(f"Current perplexity: {current_metrics['perplexity']:.2f}")

    # 3. Compare with baseline
    baseline_metrics = load_baseline_metrics()
    if current_metrics['perplexity'] > baseline_metrics['perplexity'] * 1.5:
        print("🚨 Perplexity increased >50% - Rolling back")
        checkpointer.restore_checkpoint(baseline_id)

    # 4. Re-benchmark
    new_metrics = run_benchmarks(model, tokenizer)
    print(f"After rollback: {new_metrics['perplexity']:.2f}")
    # --- end of the guide's block ---

    out = capsys.readouterr().out
    assert "Rolling back" in out
    assert new_metrics["perplexity"] == baseline_metrics["perplexity"]


def _corrupt_every_blob(checkpoint_dir):
    """Flip the last byte of every stored tensor file: every restore must now fail verification."""
    blobs = [p for p in (checkpoint_dir / "blobs").rglob("*") if p.is_file()]
    assert blobs
    for blob in blobs:
        data = bytearray(blob.read_bytes())
        data[-1] ^= 0xFF
        blob.write_bytes(bytes(data))


def test_scenario_4_checkpoint_restore_fails(tmp_path, monkeypatch, capsys):
    hub_cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    put_in_hub_cache(hub_cache, "Qwen/Qwen2.5-3B-Instruct", make_tiny_qwen2(seed=7))
    model = make_tiny_qwen2(seed=7)
    checkpointer = CheckpointManager(model, tmp_path / "checkpoints", memory_snapshot=False)
    checkpointer.save_checkpoint(metadata={"state": "baseline"})
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    checkpointer.save_checkpoint(metadata={"state": "manual"})
    _corrupt_every_blob(checkpointer.checkpoint_dir)
    with torch.no_grad():
        model.model.embed_tokens.weight.fill_(float("nan"))

    # --- guide, Scenario 4, verbatim ---
    # 1. List all checkpoints
    checkpoints = checkpointer.list_checkpoints()
    print(f"Available checkpoints: {len(checkpoints)}")

    # 2. Try alternative checkpoint
    if len(checkpoints) > 1:
        alt_checkpoint = checkpoints[-2]['id']  # Second most recent
        print(f"Trying alternative: {alt_checkpoint}")
        success = checkpointer.restore_checkpoint(alt_checkpoint)

    # 3. If all checkpoints fail, reload from disk
    if not success:
        print("🚨 All checkpoints failed - reloading from disk")
        from engine.model_manager import ModelManager

        manager = ModelManager("Qwen/Qwen2.5-3B-Instruct")
        manager.load_model()
        model = manager.model
        print("✓ Reloaded fresh model from disk")

    # 4. Create new baseline
    checkpoint_id = checkpointer.save_checkpoint(
        metadata={"purpose": "New baseline after recovery"}
    )
    # --- end of the guide's block ---

    out = capsys.readouterr().out
    assert "Available checkpoints: 2" in out and "reloading from disk" in out
    assert success is False
    on_disk = make_tiny_qwen2(seed=7)
    assert same_bytes(model, on_disk)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert checkpoint_id in {c["id"] for c in checkpointer.list_checkpoints()}

    # What step 4 really saved: step 3 rebinds the name `model` only, so `checkpointer` still
    # holds the old object, and the "new baseline" is its state (NaN embeddings, scaled MLP) ...
    assert checkpointer.model is not model
    assert torch.isnan(checkpointer.model.model.embed_tokens.weight).all()
    assert checkpointer.compare_with_model(checkpoint_id)["num_differences"] == 0
    # ... and that save proved each file it shares with the old checkpoints before reusing it:
    # the damaged ones it still found were rewritten from the live tensors and reported, so the
    # new baseline restores from disk, exactly to the state it was saved from.
    assert "model.layers.0.mlp.up_proj.weight" in [r["tensor"] for r in checkpointer.repairs]
    target = make_tiny_qwen2(seed=11)
    fresh = CheckpointManager(target, tmp_path / "checkpoints", memory_snapshot=False)
    assert fresh.restore_checkpoint(checkpoint_id), fresh.last_error
    assert same_bytes(target, checkpointer.model)


def test_scenario_4_with_the_engines_reload_gives_a_restorable_baseline(tmp_path, monkeypatch):
    """The engine's path (engine/emergency.py reload_from_disk): ModelManager.reload() copies the
    weights into the object every holder shares, so the new baseline holds the weights on disk."""
    hub_cache = tmp_path / "hf-hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(hub_cache))
    put_in_hub_cache(hub_cache, "Qwen/Qwen2.5-3B-Instruct", make_tiny_qwen2(seed=7))
    manager = ModelManager("Qwen/Qwen2.5-3B-Instruct")
    assert manager.load_model(), manager.error
    checkpointer = CheckpointManager(manager.model, tmp_path / "checkpoints", memory_snapshot=False)
    checkpointer.save_checkpoint(metadata={"state": "baseline"})
    with torch.no_grad():
        manager.model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    checkpointer.save_checkpoint(metadata={"state": "manual"})
    _corrupt_every_blob(checkpointer.checkpoint_dir)
    with torch.no_grad():
        manager.model.model.embed_tokens.weight.fill_(float("nan"))
    alt_checkpoint = checkpointer.list_checkpoints()[-2]["id"]  # the guide's step 2
    assert checkpointer.restore_checkpoint(alt_checkpoint) is False

    assert manager.reload(), manager.error  # step 3, as the engine does it
    assert checkpointer.model is manager.model
    checkpoint_id = checkpointer.save_checkpoint(metadata={"purpose": "New baseline after recovery"})
    assert checkpointer.verify_checkpoint(checkpoint_id), checkpointer.last_error  # as reload_from_disk checks

    target = make_tiny_qwen2(seed=11)
    fresh = CheckpointManager(target, tmp_path / "checkpoints", memory_snapshot=False)
    assert fresh.restore_checkpoint(checkpoint_id), fresh.last_error
    assert same_bytes(target, make_tiny_qwen2(seed=7))
    assert target.lm_head.weight is target.model.embed_tokens.weight


def same_bytes(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    """Every tensor of `a` holds exactly the bytes of `b`'s (NaN-safe: bytes, not values)."""
    sa, sb = a.state_dict(), b.state_dict()
    raw = lambda t: t.detach().contiguous().reshape(-1).view(torch.uint8)  # noqa: E731
    return sa.keys() == sb.keys() and all(torch.equal(raw(sa[k]), raw(sb[k])) for k in sa)
