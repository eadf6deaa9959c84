"""The drift strip and the policy screen against a real engine: a real policy file, a real edit of one layer."""

from __future__ import annotations

import pytest

from console.app import RedlineApp
from console.screens.policy_screen import PolicyScreen
from engine.commands import RunExperiment
from engine.events import EngineState
from tests.console.conftest import screen_text
from tests.console.test_console_engine import TRIPLE, make_engine, until
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


async def test_an_edit_of_one_layer_drifts_that_layer_only_and_the_policy_screen_shows_the_file(
        tmp_path, tiny_model_dir):
    policy = tmp_path / "strict.toml"
    policy.write_text("[thresholds]\nmax_weight_value = 250\n")
    engine = make_engine(tiny_model_dir, tmp_path / "run", policy_file=str(policy))
    app = RedlineApp(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE and app.state.drift, "the engine")
        assert [layer.relative for layer in app.state.drift.layers] == [0.0] * len(app.state.drift.layers)
        assert {layer.layer for layer in app.state.drift.layers if layer.tied} == {"model.embed_tokens", "lm_head"}

        engine.submit(RunExperiment(path=str(write_experiment(tmp_path, TRIPLE))))
        await until(pilot, lambda: any(layer.relative for layer in app.state.drift.layers), "the drift")
        moved = [layer for layer in app.state.drift.layers if layer.relative]
        assert [(m.layer, m.tensor) for m in moved] == [("model.layers.0", "model.layers.0.mlp.down_proj.weight")]
        assert moved[0].relative == pytest.approx(2.0, rel=1e-4) and moved[0].severity == "CRITICAL"

        def strip() -> str:
            return next(line for line in screen_text(app).splitlines() if line.lstrip().startswith("drift "))

        await until(pilot, lambda: "200% model.layers.0 mlp.down_proj.weight" in strip(),
                    "the strip (redrawn at most twice a second)")

        await pilot.press("P")
        assert isinstance(app.screen, PolicyScreen)
        await pilot.pause()
        rows = [line.strip("█ ").split() for line in screen_text(app).splitlines()]
        assert ["max_weight_value", "250", "--policy"] in rows
        assert engine.core.safety.thresholds["max_weight_value"] == 250
        await pilot.press("escape", "q")
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
