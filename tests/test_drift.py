"""Drift from the baseline (engine.detection.drift), the policy as an event (engine.policy_info), and both
on the wire and in the attach snapshot."""

from __future__ import annotations

import json

import pytest
import torch

from engine.checkpointing import CheckpointManager
from engine.codec import decode_event
from engine.detection.drift import Cadence, DriftTracker, layer_of
from engine.health_scan import scan_model
from engine.policy_file import load_run_policy
from engine.policy_info import policy_info
from engine.runtime.engine_view import EngineView
from tests.conftest import make_tiny_qwen2


def moved(tracker: DriftTracker) -> dict[str, tuple[str, float]]:
    return {d.layer: (d.tensor, d.relative) for d in tracker.by_layer() if d.relative}


@pytest.mark.parametrize("held", [True, False], ids=["from the held snapshot", "from disk"])
def test_drift_recomputes_only_written_tensors_and_names_their_layer(tmp_path, held):
    model = make_tiny_qwen2()
    manager = CheckpointManager(model, tmp_path / "checkpoints", memory_snapshot=held)
    baseline = manager.save_checkpoint({"state": "baseline"})
    tracker = DriftTracker(model, manager.tensor_reader(baseline))
    assert tracker.update() == len(tracker.tensors) and moved(tracker) == {}
    assert {d.layer for d in tracker.by_layer() if d.tied} == {"model.embed_tokens", "lm_head"}

    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight.mul_(1.5)
    assert tracker.update() == 1
    assert moved(tracker) == {"model.layers.1": ("model.layers.1.mlp.up_proj.weight", pytest.approx(0.5))}
    assert tracker.update() == 0

    with torch.no_grad():
        model.lm_head.weight.add_(1.0)  # tied: the embedding moves with it
    tracker.update()
    assert set(moved(tracker)) == {"model.layers.1", "model.embed_tokens", "lm_head"}

    tracker.update(scan_model(model, norms=True))
    assert manager.restore_checkpoint(baseline)  # copies bytes in without bumping version counters
    assert tracker.update(scan_model(model, norms=True)) == 2  # the health scan sees what changed back
    assert moved(tracker) == {}


def test_layer_names_and_cadence():
    assert layer_of("model.layers.12.mlp.down_proj.weight") == "model.layers.12"
    assert layer_of("transformer.h.0.attn.c_attn.bias") == "transformer.h.0"
    assert layer_of("lm_head.weight") == "lm_head"
    now = [100.0]
    cadence = Cadence(interval=1.0, budget=0.01, clock=lambda: now[0])
    assert cadence.due
    cadence.done(0.05)  # 50 ms of work: not again for 5 s, so drift stays within 1 % of the time
    now[0] = 104.9
    assert not cadence.due
    now[0] = 105.0
    assert cadence.due


def test_policy_and_drift_round_trip_and_reach_an_attaching_console(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "policy.toml").write_text("[rules.spike]\nenabled = false\n")
    given = tmp_path / "given.toml"
    given.write_text('[thresholds]\ngradient_clip = 5\n[rules.update_size]\nactions = { HIGH = "pause" }\n')
    info = policy_info(load_run_policy(run_dir, given), run_dir)
    origins = {s.name: s.origin for s in info.settings if s.origin != "default"}
    assert origins == {"gradient_clip": "--policy", "spike.enabled": "run dir", "update_size.actions.HIGH": "--policy"}
    rules = {r.rule: r for r in info.rules}
    assert not rules["spike"].enabled and rules["spike"].origin == "run dir" and rules["nonfinite"].origin == "default"
    assert info.sources == (f"run dir: {run_dir / 'policy.toml'}", f"--policy: {given}")

    model = make_tiny_qwen2()
    manager = CheckpointManager(model, tmp_path / "checkpoints")
    tracker = DriftTracker(model, manager.tensor_reader(manager.save_checkpoint({})))
    tracker.update()
    from engine.events import DriftMap

    drift = DriftMap(baseline="b", layers=tracker.by_layer(), step=3)
    for event in (info, drift):
        assert decode_event(json.loads(event.to_json())) == event
    view = EngineView(None, 0.0)
    for event in (info, drift):
        view.apply(event)
    assert info in view.snapshot_events() and drift in view.snapshot_events()
