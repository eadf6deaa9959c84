"""The drift strip and the policy screen on a recording: the fixed demo run plus the engine's drift and policy.

The drift map and policy are built by the engine's own code (engine.policy_info on a real policy file,
LayerDrift severities from engine.policy), written as JSON lines after the demo recording, replayed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from console.app import RedlineApp
from console.replay import ReplaySource
from console.screens.policy_screen import PolicyScreen
from engine.events import DriftMap, LayerDrift
from engine.policy import change_severity
from engine.policy_file import load_run_policy
from engine.policy_info import policy_info
from tests.console.conftest import RECORDING, screen_text

LAST_TIME = 1760000042.5  # the demo recording's last event


def drift_map(layers: int = 24) -> DriftMap:
    """A model whose middle layer was edited hard, a neighbour a little; embedding and head tied."""
    moved = {12: ("mlp.down_proj.weight", 0.8), 13: ("self_attn.o_proj.weight", 0.03)}
    rows = [LayerDrift("model.embed_tokens", 0.0, "", True, "INFO")]
    for i in range(layers):
        tensor, value = moved.get(i, ("", 0.0))
        rows.append(LayerDrift(f"model.layers.{i}", value, f"model.layers.{i}.{tensor}" if tensor else "", False,
                               change_severity(value) if value else "INFO"))
    rows += [LayerDrift("model.norm", 0.0, "", False, "INFO"), LayerDrift("lm_head", 0.0, "", True, "INFO")]
    return DriftMap(baseline="checkpoint_20251009_011320_01ab01cd", layers=tuple(rows), step=42, time=LAST_TIME)


def recording_with_views(directory: Path) -> Path:
    run_dir = directory / "run"
    run_dir.mkdir()
    (run_dir / "policy.toml").write_text("[thresholds]\nmax_weight_value = 250\n")
    extra = directory / "strict.toml"
    extra.write_text('[rules.update_size]\nhigh = 0.25\nactions = { HIGH = "pause" }\n')
    info = dataclasses.replace(policy_info(load_run_policy(run_dir, extra), run_dir), time=LAST_TIME)
    path = directory / "with_views.jsonl"
    path.write_text(RECORDING.read_text() + info.to_json() + "\n" + drift_map().to_json() + "\n")
    return path


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


async def test_drift_strip_and_policy_screen_fit_80x24(tmp_path):
    app = RedlineApp(ReplaySource(recording_with_views(tmp_path)))
    async with app.run_test(size=(80, 24)) as pilot:
        await settle(pilot)
        strip = next(line for line in screen_text(app).splitlines() if line.lstrip().startswith("drift "))
        assert "80% model.layers.12 mlp.down_proj.weight" in strip, strip
        assert strip.count("⇄") == 2 and len(strip.rstrip()) <= 80
        await pilot.press("P")
        assert isinstance(app.screen, PolicyScreen)
        await settle(pilot)
        text = screen_text(app)
        assert "run dir: " in text and "--policy: " in text
        rows = [line.strip("█ ").split() for line in text.splitlines()]
        changed = {}  # the first row of each name: the "changed value" table comes before the rules
        for row in rows:
            if row and row[0] in ("max_weight_value", "update_size.high"):
                changed.setdefault(row[0], row[1:])
        assert changed["max_weight_value"][:3] == ["250", "run", "dir"], changed
        assert changed["update_size.high"][:2] == ["0.25", "--policy"], changed
        await pilot.press("escape")
        assert not isinstance(app.screen, PolicyScreen)


def test_drift_strip_80x24(snap_compare, tmp_path):
    assert snap_compare(RedlineApp(ReplaySource(recording_with_views(tmp_path))), terminal_size=(80, 24),
                        run_before=settle)


def test_drift_strip_160x48(snap_compare, tmp_path):
    assert snap_compare(RedlineApp(ReplaySource(recording_with_views(tmp_path))), terminal_size=(160, 48),
                        run_before=settle)
