"""What the engine reports beyond state: run outcomes, judged health gauges, judged tensor changes."""

from __future__ import annotations

from engine import policy
from engine.commands import Compare, RunExperiment
from engine.events import CheckpointList, ComparisonReady, EngineStateChanged, HealthSnapshot, RunOutcome
from engine.runtime.outcomes import OUTCOME_FINISHED, OUTCOME_LOAD_ERROR, OUTCOMES
from tests.engine_harness import engines, tiny_model_dir, write_experiment  # noqa: F401

TRIPLE_ONE_LAYER = """
    import torch

    def run(ctx):
        with torch.no_grad():
            ctx.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        ctx.step("tripled")
"""

SCALE_ALL_WEIGHTS = """
    import torch

    def run(ctx):
        with torch.no_grad():
            ctx.model.model.layers[0].mlp.down_proj.weight.fill_(500.0)
        ctx.step("huge")
"""


def test_a_finished_run_is_published_as_a_run_outcome_before_idle(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, TRIPLE_ONE_LAYER)
    driver = engines(tiny_model_dir, tmp_path / "run")
    mark = len(driver.events)
    assert driver.command(RunExperiment(path=str(experiment))).ok
    assert driver.wait_outcome() == OUTCOME_FINISHED
    outcome = driver.wait_for(lambda e: isinstance(e, RunOutcome), since=mark)
    assert (outcome.outcome, outcome.experiment, outcome.steps) == (OUTCOME_FINISHED, "experiment", 1)
    assert outcome.to_dict()["event"] == "outcome"
    later = driver.events[driver.events.index(outcome):]
    assert any(isinstance(e, EngineStateChanged) and e.state.value == "idle" for e in later)
    assert len(driver.of(RunOutcome)) == 1


def test_an_unusable_experiment_file_is_a_load_error_outcome(engines, tiny_model_dir, tmp_path):
    driver = engines(tiny_model_dir, tmp_path / "run")
    missing = tmp_path / "nowhere.py"
    assert not driver.command(RunExperiment(path=str(missing))).ok
    outcome = driver.wait_for(lambda e: isinstance(e, RunOutcome))
    assert outcome.outcome == OUTCOME_LOAD_ERROR == driver.engine.outcome
    assert str(missing) in outcome.detail and outcome.outcome in OUTCOMES


def test_health_snapshots_carry_gauges_judged_by_the_policy(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, SCALE_ALL_WEIGHTS)
    driver = engines(tiny_model_dir, tmp_path / "run", forensic_checkpoints=False)
    start = driver.of(HealthSnapshot)[-1]
    gauges = {g.name: g for g in start.gauges}
    assert list(gauges) == ["status", "nonfinite", "max_abs", "grad", "ppl", "device_mem", "host_mem"]
    assert gauges["status"].severity == "INFO" and gauges["nonfinite"].severity == "INFO"
    assert gauges["max_abs"].value == start.max_abs_weight and gauges["max_abs"].severity == "INFO"
    assert gauges["ppl"].value == start.perplexity and gauges["ppl"].severity == "INFO"
    mark = len(driver.events)
    assert driver.command(RunExperiment(path=str(experiment))).ok
    driver.wait_outcome()
    huge = [s for s in driver.events[mark:] if isinstance(s, HealthSnapshot) and s.max_abs_weight >= 500.0]
    assert huge, "no health snapshot saw the huge weight"
    judged = {g.name: g for g in huge[0].gauges}["max_abs"]
    assert judged.severity == policy.max_weight_severity(500.0) == "HIGH"


def test_a_comparison_judges_each_tensor_change(engines, tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, TRIPLE_ONE_LAYER)
    driver = engines(tiny_model_dir, tmp_path / "run")
    baseline_id = driver.of(CheckpointList)[-1].checkpoints[0].id
    assert driver.command(RunExperiment(path=str(experiment))).ok
    driver.wait_outcome()
    assert driver.command(Compare(checkpoint_a=baseline_id, checkpoint_b="current")).ok
    (change,) = driver.of(ComparisonReady)[-1].differences
    assert abs(change.relative - 2.0) < 1e-3  # tripled: the difference is twice the original
    assert change.severity == policy.change_severity(change.relative, change.change) == "CRITICAL"
