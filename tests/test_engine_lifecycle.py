"""The Engine facade end to end on a real tiny model: lifecycle and every command."""

from __future__ import annotations

import stat
import sys

import pytest

from engine.commands import Compare, Delete, EmergencyStop, Pause, Restore, Resume, RunExperiment, Save, Shutdown
from engine.events import (
    CheckpointDeleted,
    CheckpointList,
    CheckpointRestored,
    CheckpointSaved,
    CommandDone,
    ComparisonReady,
    CouplingView,
    EngineState,
    EngineStateChanged,
    Event,
    ExperimentStep,
    HealthSnapshot,
    LogLine,
)
from engine.runtime import Engine, EngineConfig
from tests.engine_harness import engines, start_engine, tiny_model_dir, write_experiment  # noqa: F401

MODIFY_AND_FINISH = """
    import torch

    def run(ctx):
        with torch.no_grad():
            ctx.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        ctx.log("modified")
        ctx.step("modified")
"""

LOOP_FOREVER = """
    def run(ctx):
        ctx.log("looping")
        while True:
            ctx.step("tick")
            ctx.wait(0.02)
"""


def test_import_of_the_facade_does_not_import_torch():
    import subprocess

    code = "import sys, engine.runtime, engine.runtime.headless; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_start_publishes_state_baseline_health_coupling(engines, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir)
    driver.pump()
    states = [e.state for e in driver.of(EngineStateChanged)]
    assert states[:3] == [EngineState.STARTING, EngineState.LOADING, EngineState.IDLE]
    ready = driver.of(EngineStateChanged)[2]
    assert ready.model == str(tiny_model_dir) and ready.device == "cpu" and ready.dtype == "float32"
    assert ready.started_at > 0
    listing = driver.of(CheckpointList)[-1]
    assert [c.state for c in listing.checkpoints] == ["baseline"]
    assert listing.checkpoints[0].health == "OK" and listing.disk_usage > 0
    coupling = driver.of(CouplingView)[-1]
    assert ("model.embed_tokens.weight", "lm_head.weight") in coupling.groups
    health = driver.of(HealthSnapshot)[-1]
    assert health.status == "OK" and health.nan_count == 0 and health.baseline_perplexity > 1
    # files: private modes
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((run_dir / "baseline_metrics.json").stat().st_mode) == 0o600
    assert driver.engine.is_alive() and driver.engine.state == EngineState.IDLE


def test_health_is_scanned_while_idle(engines, tiny_model_dir, tmp_path):
    driver = engines(tiny_model_dir, tmp_path / "run", health_interval=0.1)
    before = len(driver.events)
    for _ in range(3):  # three more snapshots arrive without any command
        driver.wait_for(lambda e: isinstance(e, HealthSnapshot), since=len(driver.events))
    assert len(driver.events) > before


def test_save_compare_restore_delete(engines, tiny_model_dir, tmp_path):
    import torch

    experiment = write_experiment(tmp_path, MODIFY_AND_FINISH)
    driver = engines(tiny_model_dir, tmp_path / "run")
    weight = driver.core.model.model.layers[0].mlp.down_proj.weight
    original = weight.detach().clone()
    baseline_id = driver.of(CheckpointList)[-1].checkpoints[0].id

    done = driver.command(RunExperiment(path=str(experiment)))
    assert done.ok and done.result == "experiment"
    assert driver.wait_outcome() == "finished"
    assert torch.equal(weight, original * 3)

    saved = driver.command(Save(purpose="after tripling"))
    assert saved.ok and saved.result.startswith("checkpoint_")
    info = driver.wait_for(lambda e: isinstance(e, CheckpointSaved) and e.checkpoint.id == saved.result).checkpoint
    assert info.purpose == "after tripling" and info.state == "manual" and info.health == "OK"

    driver.command(Compare(checkpoint_a=baseline_id, checkpoint_b="current"))
    comparison = driver.of(ComparisonReady)[-1]
    assert comparison.checkpoint_b == "current" and comparison.num_differences == 1
    assert comparison.differences[0].layer == "model.layers.0.mlp.down_proj.weight"
    assert driver.command(Compare(checkpoint_a=baseline_id, checkpoint_b=saved.result)).ok
    assert driver.of(ComparisonReady)[-1].num_differences == 1

    restored = driver.command(Restore(checkpoint_id=baseline_id))
    assert restored.ok
    assert driver.of(CheckpointRestored)[-1].ok
    assert torch.equal(weight, original)
    assert driver.core.model.lm_head.weight is driver.core.model.model.embed_tokens.weight

    assert driver.command(Delete(checkpoint_id=saved.result)).ok
    assert driver.of(CheckpointDeleted)[-1].checkpoint_id == saved.result
    # the answer goes out first, the list it changed right after it
    driver.wait_for(lambda e: isinstance(e, CheckpointList) and saved.result not in [c.id for c in e.checkpoints])

    bad = driver.command(Restore(checkpoint_id="../../etc/passwd"))
    assert not bad.ok and bad.message
    assert not driver.command(Delete(checkpoint_id="checkpoint_20990101_000000_deadbeef")).ok


def test_pause_resume_and_commands_during_an_experiment(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP_FOREVER)
    driver = engines(tiny_model_dir, tmp_path / "run", experiment=experiment)
    driver.wait_for(lambda e: isinstance(e, ExperimentStep) and e.step >= 3)
    assert not driver.command(RunExperiment(path=str(experiment))).ok  # one at a time
    assert driver.command(Pause()).ok
    paused_at = driver.wait_state(EngineState.PAUSED)
    mark = len(driver.events)
    saved = driver.command(Save(purpose="while paused"))  # commands are still served while paused
    assert saved.ok
    driver.wait_for(lambda e: isinstance(e, HealthSnapshot), since=mark)  # health still scanned
    assert not [e for e in driver.events[mark:] if isinstance(e, ExperimentStep)]
    assert driver.command(Resume()).ok
    driver.wait_state(EngineState.RUNNING, since=mark)
    driver.wait_for(lambda e: isinstance(e, ExperimentStep) and e.step > paused_at.step + 2, since=mark)
    assert driver.command(EmergencyStop(reason="test")).ok
    assert driver.wait_outcome() == "stopped"
    assert not driver.command(Pause()).ok  # nothing running any more


def test_bad_experiment_file_is_a_clear_alert_and_engine_stays_up(engines, tiny_model_dir, tmp_path):
    broken = write_experiment(tmp_path, "def run(ctx):\n    return (\n")
    driver = engines(tiny_model_dir, tmp_path / "run")
    done = driver.command(RunExperiment(path=str(broken)))
    assert not done.ok and f"{broken}:" in done.message
    assert any("Experiment not started" in m and str(broken) in m for m in driver.alert_messages("HIGH"))
    assert driver.engine.state == EngineState.IDLE and driver.engine.outcome == "load_error"
    assert driver.command(Save()).ok


def test_experiment_log_lines_and_max_steps(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP_FOREVER)
    driver = engines(tiny_model_dir, tmp_path / "run", experiment=experiment,
                     experiment_options={"max_steps": 4})
    assert driver.wait_outcome() == "finished"
    assert [e.step for e in driver.of(ExperimentStep)] == [1, 2, 3, 4]
    assert any(e.text == "looping" and e.source == "experiment" for e in driver.of(LogLine))


def test_auto_checkpoints_and_perplexity_during_an_experiment(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP_FOREVER)
    driver = engines(tiny_model_dir, tmp_path / "run", experiment=experiment, auto_checkpoint_every=2,
                     evaluate_every=2, experiment_options={"max_steps": 6})
    assert driver.wait_outcome() == "finished"
    autos = [e.checkpoint for e in driver.of(CheckpointSaved) if e.checkpoint.state == "auto"]
    assert len(autos) == 3 and all(c.health == "OK" for c in autos)
    assert driver.core.checkpoints.memory_snapshot_id == autos[-1].id
    assert any(e.perplexity is not None and e.step >= 2 for e in driver.of(HealthSnapshot))


def test_shutdown_saves_a_final_checkpoint_and_is_idempotent(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP_FOREVER)
    driver = start_engine(tiny_model_dir, tmp_path / "run", experiment=experiment)
    driver.wait_for(lambda e: isinstance(e, ExperimentStep))
    driver.engine.shutdown(timeout=60)
    assert not driver.engine.is_alive()
    driver.engine.shutdown()  # again: nothing happens
    driver.pump()
    final = [e.checkpoint for e in driver.of(CheckpointSaved) if e.checkpoint.state == "shutdown"]
    assert len(final) == 1
    done = [e for e in driver.of(CommandDone) if e.command == "shutdown"]
    assert done and done[0].ok and done[0].result == final[0].id
    assert driver.of(EngineStateChanged)[-1].state == EngineState.STOPPED
    assert driver.engine.outcome == "stopped"
    late = driver.engine.submit(Save())
    driver.pump()
    refused = [e for e in driver.of(CommandDone) if e.command_id == late]
    assert refused and not refused[0].ok and "not running" in refused[0].message


def test_readonly_refuses_mutations_and_writes_nothing(engines, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "observed"
    driver = engines(tiny_model_dir, run_dir, readonly=True)
    for command in (Save(), Restore(checkpoint_id="x"), Delete(checkpoint_id="x"), Pause(), Resume(),
                    EmergencyStop(), RunExperiment()):
        done = driver.command(command)
        assert not done.ok and "read-only" in done.message
    assert driver.engine.state == EngineState.IDLE
    driver.engine.shutdown()
    assert not run_dir.exists()


def test_model_that_cannot_load_is_an_error_state_not_a_dead_thread(tmp_path):
    driver = start_engine(tmp_path / "no-such-model", tmp_path / "run")
    assert driver.engine.state == EngineState.ERROR and driver.engine.is_alive()
    assert driver.engine.outcome == "model_error"
    assert any("Model not loaded" in m for m in driver.alert_messages("CRITICAL"))
    done = driver.command(Save())
    assert not done.ok and "error state" in done.message
    driver.engine.shutdown(timeout=30)
    assert not driver.engine.is_alive()


def test_engine_failure_becomes_critical_alert_and_error_state(tiny_model_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    driver = start_engine(tiny_model_dir, blocker / "run")  # the run dir cannot be created
    assert driver.engine.state == EngineState.ERROR and driver.engine.is_alive()
    assert any("Engine failure" in m for m in driver.alert_messages("CRITICAL"))
    assert not driver.command(Compare(checkpoint_a="x")).ok
    assert driver.command(Shutdown()).ok
    driver.wait_until(lambda: not driver.engine.is_alive())


def test_facade_contract_errors():
    engine = Engine(EngineConfig(model="demo", experiment=None))
    with pytest.raises(TypeError, match="Command"):
        engine.submit("save")
    engine.shutdown()  # never started: nothing to do
    assert not engine.is_alive() and engine.state == EngineState.STARTING


def test_a_saves_answer_goes_out_before_the_checkpoint_list_it_changed(engines, tiny_model_dir, tmp_path):
    """The operator waits for the answer; reading every manifest for the list (milliseconds, more with each
    checkpoint) comes after it. The list still follows at once, and the CheckpointSaved before the answer."""
    driver = engines(tiny_model_dir, tmp_path / "run")
    driver.wait_for(lambda e: isinstance(e, CheckpointList))
    since = len(driver.of(Event))
    saved = driver.command(Save(purpose="ordering"))
    listed = driver.wait_for(lambda e: isinstance(e, CheckpointList) and saved.result in [c.id for c in e.checkpoints],
                             since=since)
    events = driver.events[since:]
    answer, news = events.index(saved), next(i for i, e in enumerate(events) if isinstance(e, CheckpointSaved))
    assert news < answer < events.index(listed)
    assert not any(isinstance(e, CheckpointList) for e in events[:answer])
