"""engine.detection and the policy table on real fine-tunes of small models built from configs.

Each scenario (tests/detection_workloads.py) trains for real; the fused scan and
the Detector run after every optimizer step, as the engine runs them.
"""

from __future__ import annotations

import pytest
import torch

from engine.detection import BaselineStats, Detector
from engine.detection.escalation import Escalation
from engine.detection.rolling import SeriesRules
from engine.detection.sketch import WeightSketch
from engine.detection.update_size import UpdateSize
from engine.health_scan import scan_model
from engine.policy import RULES, Action, Policy
from engine.policy_file import PolicyError, apply_policy, load_policy_file, load_run_policy
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2
from tests.detection_workloads import finetune, mlp_input_norm, mlp_matrix, rank_one_edit

ONSET = 6


def _watch(model, scenario: str, steps: int, policy: Policy | None = None):
    """Fine-tune `model`; per step, the issues at HIGH or above. Returns (issues by step, detector)."""
    detector = Detector(model, policy, baseline=BaselineStats.from_scan(scan_model(model, norms=True)))
    found = {}
    for step, loss in enumerate(finetune(model, scenario, steps, ONSET)):
        issues = detector.evaluate(step, scan_model(model, grads=True, norms=True), loss=loss)
        loud = [i for i in issues if i["severity"] in ("HIGH", "CRITICAL")]
        if loud:
            found[step] = loud
        if any(i["severity"] == "CRITICAL" for i in loud) and scenario != "healthy":
            break
    return found, detector


def _first_critical(found: dict) -> tuple[int, list[dict]]:
    step = min(s for s, issues in found.items() if any(i["severity"] == "CRITICAL" for i in issues))
    return step, [i for i in found[step] if i["severity"] == "CRITICAL"]


@pytest.mark.slow
@pytest.mark.parametrize("make", [make_tiny_qwen2, make_tiny_llama, make_tiny_gpt2])
def test_learning_rate_spike_is_critical_at_once(make):
    found, _ = _watch(make(), "lr_spike", ONSET + 4)
    step, critical = _first_critical(found)
    assert ONSET <= step <= ONSET + 2
    assert all(i["action"] == "rollback" for i in critical)
    assert not any(s < ONSET for s in found), found


def test_huge_rank_one_edit_is_critical_at_its_step_naming_the_tensor():
    model = make_tiny_llama()
    name, _ = mlp_matrix(model)
    found, _ = _watch(model, "rank_one", ONSET + 3)
    step, critical = _first_critical(found)
    assert step == ONSET
    assert critical[0]["layer"] == name and name in critical[0]["message"]
    assert {i["rule"] for i in critical} & {"baseline_departure", "update_size"}


@pytest.mark.parametrize("make", [make_tiny_qwen2, make_tiny_gpt2])
def test_an_edit_that_only_kills_gradients_is_critical(make):
    model = make()
    norm_name, _ = mlp_input_norm(model)
    found, _ = _watch(model, "kill_grads", ONSET + 4)
    step, critical = _first_critical(found)
    assert step == ONSET + 1  # the first backward pass after the edit
    assert critical[0]["rule"] == "dead_gradients"
    block = norm_name.split(".")[:-2]  # model.layers.0 / transformer.h.0
    assert any(".".join(block) in t for t in critical[0]["tensors"])


@pytest.mark.slow
def test_healthy_finetune_200_steps_raises_nothing():
    found, detector = _watch(make_tiny_qwen2(), "healthy", 200)
    assert found == {}
    assert len(detector.series.windows["loss"]) == RULES["spike"].params["window"].default


def test_baseline_statistics_survive_a_restart(tmp_path):
    model = make_tiny_gpt2()
    scan = scan_model(model, norms=True)
    stats = BaselineStats.from_scan(scan, "ckpt-1")
    stats.save(tmp_path / "baseline_stats.json")
    again = BaselineStats.load(tmp_path / "baseline_stats.json")
    assert again is not None and again.checkpoint_id == "ckpt-1" and again.matches(scan)
    assert again.tensors == stats.tensors and again.rms_floor == pytest.approx(stats.rms_floor)
    assert not again.matches(scan_model(make_tiny_llama(), norms=True))
    (tmp_path / "broken.json").write_text("{not json")
    assert BaselineStats.load(tmp_path / "broken.json") is None


def test_spike_needs_both_a_robust_z_and_a_material_ratio():
    rules = SeriesRules(Policy.default().params["spike"])
    for value in [1.0, 1.01, 0.99, 1.0, 1.02, 0.98, 1.0, 1.01]:
        assert rules.observe("loss", value) is None
    assert rules.observe("loss", 1.5) is None  # improbable, but only 1.5x: no alert
    assert rules.observe("loss", 0.1) is None  # downward: not a spike of a loss
    assert rules.observe("loss", 4.0)["severity"] == "HIGH"
    assert rules.observe("loss", 50.0)["severity"] == "CRITICAL"
    assert rules.observe("loss", float("nan"))["rule"] == "nonfinite"
    assert 50.0 not in rules.windows["loss"].values  # a CRITICAL value never becomes normal


def test_escalation_by_persistence_and_by_growth():
    escalation = Escalation(persist_steps=3, growth=10)
    high = {"severity": "HIGH", "rule": "spike", "check": "spike", "layer": "loss", "message": "x", "value": 4.0}
    assert escalation.judge(1, [high]) == [] and escalation.judge(2, [high]) == []
    assert escalation.judge(3, [high])[0]["rule"] == "escalation"
    assert escalation.judge(5, [high]) == []  # a gap: starts again
    grown = escalation.judge(6, [{**high, "value": 40.0}])
    assert grown and "grew 10x" in grown[0]["message"]
    assert Escalation(3, 10).judge(1, [{**high, "rule": "gradient_clip"}]) == []  # does not escalate


# -- the policy table and policy files -----------------------------------------------------


def test_every_rule_has_an_action_per_severity_and_disabled_rules_only_inform():
    policy = Policy.default()
    assert policy.action_for("update_size", "CRITICAL") is Action.ROLLBACK
    assert policy.action_for("update_size", "HIGH") is Action.ALERT
    off = apply_policy(policy, {"rules": {"update_size": {"enabled": False}}})
    decided = off.decide({"severity": "CRITICAL", "check": "update_size", "message": "m"})
    assert decided["severity"] == "INFO" and decided["action"] == "alert"
    assert policy.decide({"severity": "CRITICAL", "check": "grad_nan"})["rule"] == "nonfinite"
    assert len(policy.describe()) == len(RULES)


def test_policy_file_overrides_thresholds_parameters_and_actions(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "policy.toml").write_text(
        '[thresholds]\nmax_weight_value = 250\n\n[rules.spike]\nz = 8\nactions = { CRITICAL = "pause" }\n')
    extra = tmp_path / "extra.toml"
    extra.write_text('[rules.spike]\nz = 9\n[rules.update_size]\nactions = { high = "stop" }\n')
    policy = load_run_policy(run_dir, extra)
    assert policy.thresholds["max_weight_value"] == 250
    assert policy.param("spike", "z") == 9
    assert policy.action_for("spike", "CRITICAL") is Action.PAUSE
    assert policy.action_for("spike", "HIGH") is Action.ALERT
    assert policy.action_for("update_size", "HIGH") is Action.STOP
    assert policy.sources == (str(run_dir / "policy.toml"), str(extra))


@pytest.mark.parametrize("text, expected", [
    ("[rulez]\n", ["unknown section [rulez]", "[thresholds]", "[rules.NAME]"]),
    ("[rules.spikes]\nz = 3\n", ["unknown rule rules.spikes", "spike", "update_size"]),
    ("[rules.spike]\nzz = 3\n", ["rules.spike.zz", "critical_ratio", "window", "enabled"]),
    ("[rules.spike]\nwindow = 10.5\n", ["rules.spike.window", "whole number"]),
    ("[rules.update_size]\nsample = -1\n", ["rules.update_size.sample", ">= 0", "elements per tensor"]),
    ("[rules.spike]\nz = -1\n", ["rules.spike.z", ">= 0"]),
    ("[rules.spike]\nz = 'six'\n", ["rules.spike.z", "must be a number"]),
    ("[rules.spike]\nenabled = 'yes'\n", ["rules.spike.enabled", "true or false"]),
    ("[rules.spike]\nactions = { CRITICAL = 'explode' }\n", ["explode", "rollback", "pause"]),
    ("[rules.spike]\nactions = { SEVERE = 'alert' }\n", ["unknown severity 'SEVERE'", "CRITICAL"]),
    ("[thresholds]\nmax_weight = 1\n", ["thresholds.max_weight", "max_weight_value"]),
    ("[thresholds]\nhost_memory_fraction = 2\n", ["thresholds.host_memory_fraction", "between 0 and 1"]),
    ("[rules.spike\n", ["not valid TOML"]),
])
def test_policy_file_errors_name_the_key_and_the_known_ones(tmp_path, text, expected):
    path = tmp_path / "policy.toml"
    path.write_text(text)
    with pytest.raises(PolicyError) as info:
        load_policy_file(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, message


def test_missing_policy_file(tmp_path):
    with pytest.raises(PolicyError, match="policy file not found"):
        load_policy_file(tmp_path / "nope.toml")


# -- the sampled update size ------------------------------------------------------------------


def _policy(**update_size) -> Policy:
    return apply_policy(Policy.default(), {"rules": {"update_size": update_size}})


def test_sampled_update_size_estimates_dense_updates_and_a_rank_one_edit():
    model = make_tiny_qwen2()
    sampled, exact = UpdateSize(model, sample=256), UpdateSize(model, sample=0)
    assert exact.exact and not sampled.exact
    for sizes in (sampled, exact):
        assert sizes.measure(scan_model(model, norms=True)) == []  # the first observation
    name, matrix = mlp_matrix(model)
    before = matrix.detach().clone()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():  # a dense step of about 0.3x each tensor's RMS, as a large learning rate makes
            p.add_(torch.randn(p.shape, generator=g) * 0.3 * p.pow(2).mean().sqrt().clamp_min(1e-3))
    rank_one_edit(matrix, scale=5.0)
    scan = scan_model(model, norms=True)
    estimate, truth = dict(sampled.measure(scan)), dict(exact.measure(scan))
    assert truth[name] == pytest.approx(float((matrix.detach() - before).norm() / before.norm()), rel=1e-4)
    numel = dict(zip(sampled.sketch.names, [n for g in sampled.sketch.groups for n in g.numels]))
    compared = [n for n in truth if numel[n] > 256]
    assert len(compared) >= 10 and name in compared
    for n in compared:
        assert estimate[n] == pytest.approx(truth[n], rel=0.2), n
    assert truth[name] > 2.0 and estimate[name] > 2.0  # CRITICAL either way


def _sample_of(sketch: WeightSketch) -> torch.Tensor:
    sample = sketch.new_sample()
    sketch.gather(sample, 0)
    return sample.slots[0][0]


@pytest.mark.parametrize("off", ["baseline_departure", "update_size"])
def test_a_huge_edit_of_a_few_elements_the_sample_misses_is_critical_at_its_step(off):
    model = make_tiny_llama()
    name, matrix = mlp_matrix(model)
    policy = apply_policy(_policy(sample=64), {"rules": {off: {"enabled": False}}})
    detector = Detector(model, policy, baseline=BaselineStats.from_scan(scan_model(model, norms=True)))
    assert detector.evaluate(0, scan_model(model, norms=True)) == []
    sketch = detector.updates.sketch
    group = sketch.groups[0]
    view = group.sources[group.names.index(name)]
    sampled = {view.storage_offset() - matrix.storage_offset() + i * view.stride(0) for i in range(view.numel())}
    missed = [i for i in range(matrix.numel()) if i not in sampled][:: matrix.numel() // 3][:3]
    before = _sample_of(sketch)
    with torch.no_grad():
        matrix.view(-1)[missed] = 300 * float(matrix.abs().max())
    assert torch.equal(_sample_of(sketch), before)  # the sample alone sees no change at all
    issues = detector.evaluate(1, scan_model(model, norms=True))
    critical = [i for i in issues if i["severity"] == "CRITICAL"]
    assert critical and critical[0]["layer"] == name and critical[0]["action"] == "rollback"
    assert {i["rule"] for i in critical} == {"update_size", "baseline_departure"} - {off}


@pytest.mark.parametrize("shape", [(256, 64), (64, 256), (1000, 128)])
def test_sampled_positions_spread_over_rows_and_columns_even_when_the_row_length_divides_the_stride(shape):
    module = torch.nn.Linear(shape[1], shape[0], bias=False)  # weight: shape
    view = WeightSketch(module, sample=256).groups[0].sources[0]
    positions = [view.storage_offset() + i * view.stride(0) for i in range(view.numel())]
    rows, columns = {p // shape[1] for p in positions}, {p % shape[1] for p in positions}
    assert len(positions) == 256 and max(positions) < shape[0] * shape[1]
    assert len(columns) == min(256, shape[1]) and len(rows) >= min(shape[0], 256) // 2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
def test_sampled_update_size_of_a_scaling_is_exact_in_half_and_double_precision(dtype):
    model = make_tiny_qwen2().to(dtype)
    sizes = UpdateSize(model, sample=64)
    sizes.measure(scan_model(model, norms=True))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    changes = dict(sizes.measure(scan_model(model, norms=True)))
    nonzero = [n for n, p in model.named_parameters() if p.abs().max() > 0]
    assert sorted(changes) == sorted(nonzero)
    assert all(v == pytest.approx(0.5, rel=1e-2) for v in changes.values()), changes


def test_the_sample_is_a_policy_parameter_the_detector_uses_and_the_policy_screen_lists(tmp_path):
    from engine.policy_info import policy_info

    (tmp_path / "policy.toml").write_text("[rules.update_size]\nsample = 0\n")
    policy = load_run_policy(tmp_path)
    model = make_tiny_gpt2()
    assert Detector(model, policy).updates.exact and not Detector(model).updates.exact
    assert Detector(model).updates.sketch.sample == RULES["update_size"].params["sample"].default
    settings = {s.name: s for s in policy_info(policy, tmp_path).settings}
    assert (settings["update_size.sample"].value, settings["update_size.sample"].origin) == ("0", "run dir")
    assert "elements per tensor" in settings["update_size.sample"].meaning
