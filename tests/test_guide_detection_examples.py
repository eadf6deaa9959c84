"""The guide's detection examples, verbatim (only `from X import` became `from engine.X import`).

Sections: "Safety Monitor", "Weight Sharing Hazards", "Safety Metrics Dashboard". Each runs on the
tiny tied Qwen2 and on untied models (Llama, and GPT-2 where the example's names exist in it).
Lines between the guide's code are the set-up the guide leaves to the reader (a model, a
modification function, a checkpointer) and the assertions.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2

MODELS = {"qwen2-tied": make_tiny_qwen2, "llama-untied": make_tiny_llama, "gpt2": make_tiny_gpt2}


@pytest.fixture(params=list(MODELS))
def any_model(request):
    return request.param, MODELS[request.param]()


def first_linear(model):
    return next(m for m in model.modules() if isinstance(m, (nn.Linear,)) or type(m).__name__ == "Conv1D")


def break_with_nan(model):
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[0] = float("nan")


def test_real_time_monitoring_and_checking_tensors(any_model, capsys):
    _, full_model = any_model
    from engine.safety_monitor import SafetyMonitor

    # Initialize
    safety = SafetyMonitor()

    # Configure thresholds (optional)
    safety.set_threshold('nan_tolerance', 0)  # No NaN values allowed
    safety.set_threshold('max_weight_value', 10.0)
    safety.set_threshold('gradient_clip', 5.0)

    model = nn.ModuleDict({"layer": first_linear(full_model)})  # the guide's `model.layer`
    with torch.no_grad():
        model.layer.weight[0, 0] = float("nan")
        model.layer.weight[1, 1] = 20.0

    # Check a weight tensor
    weight = model.layer.weight
    result = safety.check_tensor_health(weight, "layer.weight")

    print(f"Status: {result['status']}")  # OK, WARNING, CRITICAL
    print(f"Issues: {len(result['issues'])}")

    if result['issues']:
        for issue in result['issues']:
            print(f"  🔴 {issue['severity']}: {issue['message']}")

    out = capsys.readouterr().out
    assert "Status: CRITICAL" in out and "Issues: 2" in out
    assert "🔴 CRITICAL: 1 NaN values in layer.weight" in out
    assert "🔴 HIGH: |w| up to 20 in layer.weight" in out


def test_continuous_monitoring_rolls_back_on_critical(any_model, tmp_path, capsys):
    _, model = any_model
    from engine.checkpointing import CheckpointManager
    from engine.safety_monitor import SafetyMonitor

    safety = SafetyMonitor()
    safety.set_threshold('max_weight_value', 10.0)
    checkpointer = CheckpointManager(model, tmp_path / "checkpoints")
    baseline_id = checkpointer.save_checkpoint(metadata={"state": "baseline"})
    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    num_epochs = 5
    target = first_linear(model).weight

    def modify_layer(*_):
        with torch.no_grad():
            if modify_layer.calls == 0:
                target[0, 0] = 50.0  # epoch 0: too large -> WARNING
            else:
                target[0, 1] = float("inf")  # epoch 1: -> CRITICAL
        modify_layer.calls += 1

    modify_layer.calls = 0

    # Monitor during modification loop
    for epoch in range(num_epochs):
        # Make modification
        modify_layer(...)

        # Check health
        result = safety.check_model_health(model)

        if result['status'] == 'CRITICAL':
            print("🚨 CRITICAL ISSUE DETECTED")
            # Automatic rollback
            checkpointer.restore_checkpoint(baseline_id)
            break
        elif result['status'] == 'WARNING':
            print(f"⚠️  WARNING: {result['message']}")
            # Log but continue

    out = capsys.readouterr().out
    assert epoch == 1 and modify_layer.calls == 2
    assert "⚠️  WARNING: HIGH: |w| up to 50" in out and "🚨 CRITICAL ISSUE DETECTED" in out
    assert all(torch.equal(p, original[n]) for n, p in model.named_parameters())
    assert safety.check_model_health(model)["status"] == "OK"


def test_emergency_stop_callback_restores(any_model, tmp_path, capsys):
    _, model = any_model
    from engine.checkpointing import CheckpointManager
    from engine.safety_monitor import SafetyMonitor

    safety = SafetyMonitor()
    checkpointer = CheckpointManager(model, tmp_path / "checkpoints")
    baseline_id = checkpointer.save_checkpoint(metadata={"state": "baseline"})

    # Set up emergency stop callback
    def emergency_callback():
        print("🚨 EMERGENCY STOP TRIGGERED")
        checkpointer.restore_checkpoint(baseline_id)
        print("✓ Model restored to safe state")

    safety.set_emergency_callback(emergency_callback)

    # Now if critical issue detected, callback runs automatically
    break_with_nan(model)
    assert safety.check_model_health(model)["status"] == "CRITICAL"
    out = capsys.readouterr().out
    assert "🚨 EMERGENCY STOP TRIGGERED" in out and "✓ Model restored to safe state" in out
    assert all(torch.isfinite(p).all() for p in model.parameters())

    # Review all alerts
    alerts = safety.get_alert_history()

    print(f"Total alerts: {len(alerts)}")
    for alert in alerts[-10:]:  # Last 10
        print(f"  [{alert['timestamp']}] {alert['severity']}: {alert['message']}")

    # Filter by severity
    critical_alerts = safety.get_alerts_by_severity('CRITICAL')
    print(f"Critical alerts: {len(critical_alerts)}")

    out = capsys.readouterr().out
    assert "Total alerts: 1" in out and "Critical alerts: 1" in out
    assert "] CRITICAL: 1 NaN values in " in out


@pytest.mark.parametrize("name", ["qwen2-tied", "qwen2-untied", "llama-untied"])
def test_weight_sharing_detection_safe_modification_and_tracking(name, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = {"qwen2-tied": make_tiny_qwen2, "qwen2-untied": lambda: make_tiny_qwen2(tied=False),
             "llama-untied": make_tiny_llama}[name]()
    tied = name == "qwen2-tied"
    lm_head_before = model.lm_head.weight.detach().clone()

    from engine.introspection import WeightInspector

    inspector = WeightInspector(model, "Qwen2.5-3B")

    # Detect weight sharing
    shared_weights = inspector.get_shared_weights()

    if shared_weights:
        print("⚠️  WEIGHT SHARING DETECTED:")
        for group in shared_weights:
            print(f"  Coupled: {' ↔ '.join(group)}")

    out = capsys.readouterr().out
    assert ("Coupled: model.embed_tokens.weight ↔ lm_head.weight" in out) == tied
    assert ("WEIGHT SHARING DETECTED" in out) == tied

    causal_lm, model = model, model.model  # the guide's `model.embed_tokens` is the decoder's
    delta = 0.01
    with torch.no_grad():  # an in-place change to a leaf parameter needs no_grad
        # UNSAFE - might not realize you're modifying both
        model.embed_tokens.weight += delta  # Also modifies lm_head!

    assert torch.equal(causal_lm.lm_head.weight.detach(), lm_head_before + delta) == tied

    # ✅ SAFE - use memory system with coupled tracking
    from engine.memory import MemorySystem

    memory = MemorySystem("data/memory")
    memory.set_weight_inspector(inspector)  # Enable coupled detection

    # Record modification
    memory.record_modification(
        layer_name="model.embed_tokens.weight",
        modification_data={"delta": 0.01, "method": "gradient"}
    )
    # Automatically recorded as coupled_modification
    # Tags include both 'embed_tokens' and 'lm_head.weight'

    # Query coupled modifications
    coupled_mods = memory.observations.query(
        category="coupled_modification"
    )

    print(f"Found {len(coupled_mods)} coupled modifications")
    for mod in coupled_mods:
        print(f"  Modified: {mod.data['primary_layer']}")
        print(f"  Also affected: {mod.data['coupled_layers']}")

    out = capsys.readouterr().out
    if tied:
        assert "Found 1 coupled modifications" in out
        assert "  Modified: model.embed_tokens.weight\n  Also affected: ['lm_head.weight']" in out
        assert {"embed_tokens", "lm_head.weight"} <= set(coupled_mods[0].tags)
    else:
        assert "Found 0 coupled modifications" in out
        assert len(memory.observations.query(category="modification")) == 1
    memory.close()


def test_safety_metrics_dashboard_verbatim_and_ours_agree(any_model, tmp_path, capsys):
    _, model = any_model
    from engine.checkpointing import CheckpointManager
    from engine.dashboard import get_safety_dashboard as ours
    from engine.safety_monitor import SafetyMonitor

    checkpointer = CheckpointManager(model, tmp_path / "checkpoints")
    checkpointer.save_checkpoint(metadata={"state": "baseline"})
    safety = SafetyMonitor()
    break_with_nan(model)

    def get_safety_dashboard(model, checkpointer, safety):
        """Get current safety status"""

        dashboard = {
            "checkpoints": {
                "total": len(checkpointer.list_checkpoints()),
                "latest": checkpointer.list_checkpoints()[-1]['id'],
                "disk_usage_gb": checkpointer.get_disk_usage() / 1e9
            },
            "health": safety.check_model_health(model),
            "alerts": {
                "critical": len(safety.get_alerts_by_severity('CRITICAL')),
                "high": len(safety.get_alerts_by_severity('HIGH')),
                "medium": len(safety.get_alerts_by_severity('MEDIUM'))
            },
            "weights": {
                "nan_count": sum(
                    torch.isnan(p).sum().item()
                    for p in model.parameters()
                ),
                "inf_count": sum(
                    torch.isinf(p).sum().item()
                    for p in model.parameters()
                )
            }
        }

        return dashboard

    # Use it:
    dashboard = get_safety_dashboard(model, checkpointer, safety)
    print(f"""
Safety Dashboard
━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━
Checkpoints:
  Total: {dashboard['checkpoints']['total']}
  Latest: {dashboard['checkpoints']['latest']}
  Disk: {dashboard['checkpoints']['disk_usage_gb']:.2f} GB

Health: {dashboard['health']['status']}

Alerts:
  🔴 Critical: {dashboard['alerts']['critical']}
  🟠 High: {dashboard['alerts']['high']}
  🟡 Medium: {dashboard['alerts']['medium']}

Weight Health:
  NaN values: {dashboard['weights']['nan_count']}
  Inf values: {dashboard['weights']['inf_count']}
━━━━━━━━━━━━━━━━━━━━━━━━━━━━━━
""")
    out = capsys.readouterr().out
    assert "Health: CRITICAL" in out and "🔴 Critical: 1" in out and "NaN values: 1" in out

    mine = ours(model, checkpointer, safety)
    for key in ("checkpoints", "alerts", "weights"):
        assert mine[key] == dashboard[key], key
    assert mine["health"]["status"] == dashboard["health"]["status"]
