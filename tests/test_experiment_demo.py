"""The built-in demo experiment on the real demo model: every severity and an automatic rollback."""

from __future__ import annotations

import pytest

from engine.events import Alert, CheckpointRestored, CouplingView, EngineState, EngineStateChanged
from engine.runtime import Engine, EngineConfig
from tests.engine_harness import EngineDriver

SEVERITIES = {"CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO"}


@pytest.mark.slow
def test_demo_shows_every_severity_rolls_back_and_restarts(tmp_path):
    engine = Engine(EngineConfig(model="demo", experiment="demo", run_dir=tmp_path / "run", device="cpu",
                                 experiment_options={"interval": 0.02}))
    engine.start()
    driver = EngineDriver(engine)
    try:
        # first start may train the demo model (bounded by its own time limit)
        driver.wait_for(lambda e: isinstance(e, EngineStateChanged) and e.state == EngineState.RUNNING, timeout=420)

        def seen_everything() -> bool:
            severities = {e.severity for e in driver.of(Alert)}
            restarted = sum(isinstance(e, EngineStateChanged) and e.state == EngineState.RUNNING
                            for e in driver.events) >= 2
            return severities >= SEVERITIES and restarted

        driver.wait_until(seen_everything, timeout=180)
        messages = [a.message for a in driver.of(Alert) if a.source == "emergency"]
        assert any("Automatic rollback done; demo restarts" in m for m in messages)
        assert any(e.ok for e in driver.of(CheckpointRestored))
        coupling = driver.of(CouplingView)[-1]
        assert coupling.coupled_modifications >= 1 and "embed_tokens" in " ".join(coupling.recent)
        assert any(a.severity == "MEDIUM" and "dead units" in a.message for a in driver.of(Alert))
        assert any(a.severity == "LOW" and "perplexity" in a.message for a in driver.of(Alert))
    finally:
        engine.shutdown(timeout=120)
    assert not engine.is_alive()
