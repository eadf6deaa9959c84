"""get_safety_dashboard: the guide's dict from real checkpoints, a real monitor and a real model."""

from __future__ import annotations

import torch

from engine.checkpointing import CheckpointManager
from engine.dashboard import get_safety_dashboard
from engine.safety_monitor import SafetyMonitor


def naive_counts(model):
    return (
        sum(torch.isnan(p).sum().item() for p in model.parameters()),
        sum(torch.isinf(p).sum().item() for p in model.parameters()),
    )


def test_dashboard_without_checkpoints_and_healthy(tiny_qwen2, tmp_path):
    checkpointer = CheckpointManager(tiny_qwen2, tmp_path / "checkpoints")
    dashboard = get_safety_dashboard(tiny_qwen2, checkpointer, SafetyMonitor())
    assert dashboard["checkpoints"] == {"total": 0, "latest": None, "disk_usage_gb": checkpointer.get_disk_usage() / 1e9}
    assert dashboard["health"]["status"] == "OK"
    assert dashboard["alerts"] == {"critical": 0, "high": 0, "medium": 0}
    assert dashboard["weights"] == {"nan_count": 0, "inf_count": 0}


def test_dashboard_counts_match_the_guides_loop(tiny_qwen2, tmp_path):
    checkpointer = CheckpointManager(tiny_qwen2, tmp_path / "checkpoints")
    first = checkpointer.save_checkpoint(metadata={"state": "baseline"})
    latest = checkpointer.save_checkpoint(metadata={"state": "manual"})
    safety = SafetyMonitor()
    safety.set_threshold("max_weight_value", 10.0)
    with torch.no_grad():
        tiny_qwen2.model.embed_tokens.weight[0, :2] = float("nan")  # tied: counted once, as parameters() does
        tiny_qwen2.model.layers[0].mlp.up_proj.weight[1, 1] = float("inf")
        tiny_qwen2.model.layers[1].mlp.up_proj.weight[1, 1] = 50.0
    dashboard = get_safety_dashboard(tiny_qwen2, checkpointer, safety)
    assert dashboard["checkpoints"]["total"] == 2 and dashboard["checkpoints"]["latest"] == latest != first
    assert dashboard["checkpoints"]["disk_usage_gb"] > 0
    assert dashboard["health"]["status"] == "CRITICAL"
    assert (dashboard["weights"]["nan_count"], dashboard["weights"]["inf_count"]) == naive_counts(tiny_qwen2) == (2, 1)
    assert dashboard["alerts"] == {"critical": 2, "high": 1, "medium": 0}
