"""SafetyMonitor: every severity path triggered for real on tiny transformers models."""

from __future__ import annotations

import json
import logging
import math
import os
import stat

import pytest
import torch

from engine.safety_monitor import SafetyMonitor
from engine.policy import Severity, status_for
from tests.conftest import make_tiny_qwen2

IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 129, 257]])


def checks(result, check):
    return [i for i in result["issues"] if i["check"] == check]


def test_severity_is_ordered_and_parses():
    assert Severity.CRITICAL > Severity.HIGH > Severity.MEDIUM > Severity.LOW > Severity.INFO
    assert Severity.parse(" critical ") is Severity.CRITICAL
    assert Severity.parse(Severity.LOW) is Severity.LOW
    assert str(Severity.HIGH) == "HIGH"
    with pytest.raises(ValueError, match="CRITICAL, HIGH, MEDIUM, LOW, INFO"):
        Severity.parse("severe")
    assert status_for([]) == "OK"
    assert status_for(["LOW", "INFO"]) == "OK"
    assert status_for(["MEDIUM"]) == "WARNING"
    assert status_for(["HIGH", "LOW"]) == "WARNING"
    assert status_for(["HIGH", "CRITICAL"]) == "CRITICAL"


def test_set_threshold_validates_names_and_values():
    safety = SafetyMonitor()
    safety.set_threshold("nan_tolerance", 0)
    safety.set_threshold("max_weight_value", 10.0)
    safety.set_threshold("gradient_clip", 5.0)
    assert safety.thresholds["max_weight_value"] == 10.0
    with pytest.raises(ValueError) as err:
        safety.set_threshold("max_weight", 3)
    text = str(err.value)
    assert "unknown threshold 'max_weight'" in text
    for known in ("nan_tolerance", "max_weight_value", "gradient_clip", "host_memory_fraction", "perplexity_critical"):
        assert known in text
    with pytest.raises(ValueError, match="must be a number"):
        safety.set_threshold("gradient_clip", "5")
    with pytest.raises(ValueError, match="must be a number"):
        safety.set_threshold("gradient_clip", True)
    with pytest.raises(ValueError, match="between 0 and 1"):
        safety.set_threshold("host_memory_fraction", 1.5)
    with pytest.raises(ValueError, match=">= 0"):
        safety.set_threshold("max_weight_value", -1)
    with pytest.raises(ValueError, match="whole number"):
        safety.set_threshold("nan_tolerance", 0.5)
    assert safety.thresholds["gradient_clip"] == 5.0


def test_healthy_model_is_ok(tiny_qwen2):
    result = SafetyMonitor().check_model_health(tiny_qwen2)
    assert result["status"] == "OK" and result["message"] == "OK" and result["issues"] == []
    assert result["nan_count"] == 0 and result["inf_count"] == 0
    assert result["grad_norm"] is None
    assert result["device_memory_used"] is None and result["device_memory_total"] is None
    assert result["host_memory_used"] > 0 and result["host_memory_total"] > result["host_memory_used"]
    unique = {id(p) for p in tiny_qwen2.parameters()}
    assert result["tensors_scanned"] == len(unique)  # the tied embedding is scanned once
    expected = max(p.detach().abs().max().item() for p in tiny_qwen2.parameters())
    assert result["max_abs_weight"] == pytest.approx(expected)


def test_nan_and_inf_weights_are_critical_and_counted(tiny_qwen2):
    safety = SafetyMonitor()
    with torch.no_grad():
        tiny_qwen2.model.layers[0].mlp.up_proj.weight[0, :3] = float("nan")
        tiny_qwen2.lm_head.weight[4, 7] = float("inf")  # tied: also model.embed_tokens.weight
        tiny_qwen2.model.layers[1].self_attn.o_proj.weight[2, 2] = float("-inf")
    result = safety.check_model_health(tiny_qwen2)
    assert result["status"] == "CRITICAL"
    assert result["nan_count"] == 3 and result["inf_count"] == 2
    nan = checks(result, "nan")
    assert [i["layer"] for i in nan] == ["model.layers.0.mlp.up_proj.weight"]
    assert nan[0]["severity"] == "CRITICAL" and nan[0]["source"] == "weights"
    inf_layers = {i["layer"] for i in checks(result, "inf")}
    assert inf_layers == {"model.embed_tokens.weight", "model.layers.1.self_attn.o_proj.weight"}
    assert "lm_head.weight" in result["nonfinite_layers"] and "model.embed_tokens.weight" in result["nonfinite_layers"]
    assert "NaN" in result["message"] or "Inf" in result["message"]


def test_nan_tolerance_downgrades_to_medium(tiny_qwen2):
    safety = SafetyMonitor()
    safety.set_threshold("nan_tolerance", 5)
    with torch.no_grad():
        tiny_qwen2.model.norm.weight[:2] = float("nan")
    result = safety.check_model_health(tiny_qwen2)
    assert result["status"] == "WARNING"
    assert checks(result, "nan")[0]["severity"] == "MEDIUM"


def test_huge_weight_is_high(tiny_qwen2):
    safety = SafetyMonitor()
    safety.set_threshold("max_weight_value", 10.0)
    with torch.no_grad():
        tiny_qwen2.model.layers[1].mlp.down_proj.weight[3, 1] = -42.0
    result = safety.check_model_health(tiny_qwen2)
    assert result["status"] == "WARNING"
    (issue,) = checks(result, "max_weight_value")
    assert issue["severity"] == "HIGH" and issue["layer"] == "model.layers.1.mlp.down_proj.weight"
    assert issue["value"] == pytest.approx(42.0)
    assert result["max_abs_weight"] == pytest.approx(42.0)


def _backward(model, scale=1.0):
    model.zero_grad(set_to_none=True)
    loss = model(IDS, labels=IDS).loss * scale
    loss.backward()


def test_exploding_gradient_is_high(tiny_qwen2):
    safety = SafetyMonitor()
    safety.set_threshold("gradient_clip", 5.0)
    _backward(tiny_qwen2, scale=1.0)
    calm = safety.check_model_health(tiny_qwen2)
    reference = torch.nn.utils.get_total_norm([p.grad for p in tiny_qwen2.parameters() if p.grad is not None])
    assert calm["grad_norm"] == pytest.approx(reference.item(), rel=1e-5)
    assert calm["status"] == "OK", calm["message"]
    _backward(tiny_qwen2, scale=1e4)
    result = safety.check_model_health(tiny_qwen2)
    (issue,) = checks(result, "gradient_clip")
    assert issue["severity"] == "HIGH" and issue["source"] == "gradients"
    assert result["grad_norm"] > 5.0 and result["status"] == "WARNING"


def test_nan_gradient_is_critical(tiny_qwen2):
    _backward(tiny_qwen2)
    tiny_qwen2.model.layers[0].mlp.gate_proj.weight.grad[0, 0] = float("nan")
    result = SafetyMonitor().check_model_health(tiny_qwen2)
    (issue,) = checks(result, "grad_nan")
    assert issue["severity"] == "CRITICAL" and issue["layer"] == "model.layers.0.mlp.gate_proj.weight"
    assert result["status"] == "CRITICAL"


def test_zero_gradients_are_dead_units(tiny_qwen2):
    # A zeroed down projection blocks every gradient into its MLP (and the norm that only feeds it).
    with torch.no_grad():
        tiny_qwen2.model.layers[1].mlp.down_proj.weight.zero_()
    _backward(tiny_qwen2)
    result = SafetyMonitor().check_model_health(tiny_qwen2)
    dead = {i["layer"] for i in checks(result, "dead_gradient")}
    assert dead == {
        "model.layers.1.mlp.gate_proj.weight",
        "model.layers.1.mlp.up_proj.weight",
        "model.layers.1.post_attention_layernorm.weight",
    }
    assert all(i["severity"] == "MEDIUM" for i in checks(result, "dead_gradient"))
    assert result["status"] == "WARNING"


def test_all_zero_gradients_after_zero_grad_are_only_info(tiny_qwen2):
    _backward(tiny_qwen2)
    tiny_qwen2.zero_grad(set_to_none=False)
    result = SafetyMonitor().check_model_health(tiny_qwen2)
    assert checks(result, "dead_gradient") == []
    assert checks(result, "all_gradients_zero")[0]["severity"] == "INFO"
    assert result["status"] == "OK" and result["grad_norm"] == 0.0


def test_host_memory_threshold_is_high(tiny_qwen2):
    safety = SafetyMonitor()
    safety.set_threshold("host_memory_fraction", 1e-6)
    result = safety.check_model_health(tiny_qwen2)
    (issue,) = checks(result, "host_memory")
    assert issue["severity"] == "HIGH" and issue["source"] == "memory"
    assert 0 < result["host_memory_fraction"] <= 1


def test_activation_nan_from_a_hook_names_the_block(tiny_qwen2):
    safety = SafetyMonitor()
    safety.attach_activation_monitor(tiny_qwen2)
    assert "model.layers.0" in safety.activation_modules and "lm_head" in safety.activation_modules
    with torch.no_grad():
        tiny_qwen2(IDS)
    assert safety.check_model_health(tiny_qwen2)["status"] == "OK"
    handle = tiny_qwen2.model.layers[1].mlp.register_forward_hook(lambda m, a, out: out * float("nan"))
    try:
        with torch.no_grad():
            tiny_qwen2(IDS)
    finally:
        handle.remove()
    result = safety.check_model_health(tiny_qwen2)
    layers = [i["layer"] for i in checks(result, "activation_nan")]
    assert layers[0] == "model.layers.1" and "model.layers.0" not in layers
    assert result["status"] == "CRITICAL" and result["nan_count"] == 0  # the weights themselves are clean
    safety.detach_activation_monitor()
    with torch.no_grad():
        tiny_qwen2(IDS)
    assert safety.check_model_health(tiny_qwen2)["status"] == "OK"


def test_activation_inf_from_a_weight(tiny_qwen2):
    safety = SafetyMonitor()
    safety.attach_activation_monitor(tiny_qwen2, granularity="leaves")
    assert "model.layers.0.mlp.down_proj" in safety.activation_modules
    mlp = tiny_qwen2.model.layers[0].mlp
    with torch.no_grad():
        mlp.up_proj.weight.mul_(1e10)  # large but finite inside the MLP ...
        mlp.down_proj.weight.mul_(1e36)  # ... overflowing at its output
        tiny_qwen2(IDS)
    result = safety.check_model_health(tiny_qwen2)
    assert result["nan_count"] == 0 and result["inf_count"] == 0
    act = checks(result, "activation_inf") + checks(result, "activation_nan")
    assert act and act[0]["layer"] == "model.layers.0.mlp.down_proj"
    assert "model.layers.0.mlp.up_proj" not in {i["layer"] for i in act}
    assert result["status"] == "CRITICAL"


def test_activation_spike_against_baseline_is_high(tiny_qwen2):
    safety = SafetyMonitor()
    safety.attach_activation_monitor(tiny_qwen2)
    for _ in range(4):
        with torch.no_grad():
            tiny_qwen2(IDS)
        assert safety.check_model_health(tiny_qwen2)["status"] == "OK"
    with torch.no_grad():
        tiny_qwen2.model.layers[1].mlp.down_proj.weight.mul_(500.0)
        tiny_qwen2(IDS)
    result = safety.check_model_health(tiny_qwen2)
    spikes = checks(result, "activation_spike")
    assert [i["layer"] for i in spikes][:1] == ["model.layers.1"]
    assert all(i["severity"] == "HIGH" for i in spikes) and result["status"] == "WARNING"


def test_check_tensor_health_stats_and_issues():
    safety = SafetyMonitor()
    safety.set_threshold("max_weight_value", 10.0)
    torch.manual_seed(0)
    t = torch.randn(64, 32)
    ok = safety.check_tensor_health(t, "w")
    assert ok["status"] == "OK" and ok["issues"] == []
    assert ok["mean"] == pytest.approx(t.mean().item(), abs=1e-6)
    assert ok["std"] == pytest.approx(t.std(correction=0).item(), rel=1e-5)
    assert ok["max_abs"] == pytest.approx(t.abs().max().item())
    assert ok["numel"] == t.numel()
    t[0, 0] = float("nan")
    t[1, :4] = float("inf")
    t[2, 0] = 99.0
    bad = safety.check_tensor_health(t, "w")
    assert bad["status"] == "CRITICAL" and bad["nan_count"] == 1 and bad["inf_count"] == 4
    assert {i["check"] for i in bad["issues"]} == {"nan", "inf", "max_weight_value"}
    assert bad["max_abs"] == 99.0  # the largest finite value
    assert math.isfinite(bad["mean"])  # statistics over the finite values
    big = safety.check_tensor_health(torch.full((3,), -12.0, dtype=torch.bfloat16), "b")
    assert big["status"] == "WARNING" and big["issues"][0]["severity"] == "HIGH"
    with pytest.raises(TypeError, match="torch.Tensor"):
        safety.check_tensor_health([1.0], "x")


def test_check_perplexity_thresholds():
    safety = SafetyMonitor()
    assert safety.check_perplexity(10.2, 10.0)["status"] == "OK"
    low = safety.check_perplexity(10.8, 10.0)
    assert low["status"] == "OK" and low["issues"][0]["severity"] == "LOW"
    high = safety.check_perplexity(12.5, 10.0)
    assert high["status"] == "WARNING" and high["issues"][0]["severity"] == "HIGH"
    assert high["issues"][0]["source"] == "perplexity"
    crit = safety.check_perplexity(15.1, 10.0)
    assert crit["status"] == "CRITICAL" and crit["change"] == pytest.approx(0.51)
    assert safety.check_perplexity(float("nan"), 10.0)["status"] == "CRITICAL"
    assert safety.check_perplexity(float("inf"), 10.0)["status"] == "CRITICAL"
    safety.set_threshold("perplexity_critical", 2.0)
    assert safety.check_perplexity(15.1, 10.0)["status"] == "WARNING"
    with pytest.raises(ValueError, match="baseline perplexity"):
        safety.check_perplexity(3.0, 0)


def _nan_model():
    model = make_tiny_qwen2()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    return model


def test_emergency_callback_zero_and_one_argument():
    model = _nan_model()
    safety = SafetyMonitor()
    calls = []
    safety.set_emergency_callback(lambda: calls.append("zero"))
    safety.check_model_health(model)
    safety.check_model_health(model)  # runs again on every CRITICAL check, though alerted once
    assert calls == ["zero", "zero"]
    got = []

    def with_result(result):
        got.append(result)

    safety.set_emergency_callback(with_result)
    result = safety.check_model_health(model)
    assert got == [result] and got[0]["status"] == "CRITICAL"
    assert len(safety.get_alerts_by_severity("CRITICAL")) == 1
    with pytest.raises(TypeError, match="no arguments or one"):
        safety.set_emergency_callback(lambda a, b: None)
    safety.check_model_health(make_tiny_qwen2())
    assert len(got) == 1  # not called for a healthy model


def test_emergency_callback_exception_becomes_critical_alert(caplog):
    model = _nan_model()
    safety = SafetyMonitor()

    def broken():
        raise RuntimeError("restore failed: disk gone")

    safety.set_emergency_callback(broken)
    with caplog.at_level(logging.ERROR, logger="redline.safety"):
        result = safety.check_model_health(model)
    assert result["status"] == "CRITICAL"
    alerts = [a for a in safety.get_alert_history() if a["source"] == "emergency_callback"]
    assert len(alerts) == 1 and alerts[0]["severity"] == "CRITICAL"
    assert "restore failed: disk gone" in alerts[0]["message"]
    assert any(r.exc_info and "restore failed" in str(r.exc_info[1]) for r in caplog.records)


def test_emergency_callback_that_checks_again_does_not_recurse():
    model = _nan_model()
    safety = SafetyMonitor()
    depth = []
    safety.set_emergency_callback(lambda: depth.append(safety.check_model_health(model)["status"]))
    safety.check_model_health(model)
    assert depth == ["CRITICAL"]


def test_alerts_are_deduplicated_until_the_issue_clears(tiny_qwen2):
    safety = SafetyMonitor()
    heard = []
    safety.add_alert_listener(heard.append)
    weight = tiny_qwen2.model.layers[0].self_attn.k_proj.weight
    saved = weight.detach().clone()
    with torch.no_grad():
        weight[0, 0] = float("nan")
    for _ in range(3):
        safety.check_model_health(tiny_qwen2)
    assert len(safety.get_alert_history()) == 1 and len(heard) == 1
    with torch.no_grad():
        weight.copy_(saved)
    assert safety.check_model_health(tiny_qwen2)["status"] == "OK"
    with torch.no_grad():
        weight[1, 1] = float("nan")
    safety.check_model_health(tiny_qwen2)
    history = safety.get_alert_history()
    assert len(history) == 2 and heard == history
    for alert in history:
        assert set(alert) >= {"timestamp", "severity", "message", "source"}
        assert alert["severity"] == "CRITICAL" and alert["source"] == "weights"
        assert "T" in alert["timestamp"]  # ISO 8601
    assert safety.get_alerts_by_severity(Severity.CRITICAL) == history
    assert safety.get_alerts_by_severity("high") == []


def test_alert_journal_lines(tmp_path):
    run_dir = tmp_path / "run"
    safety = SafetyMonitor(run_dir)
    model = _nan_model()
    safety.check_model_health(model)
    safety.check_perplexity(float("nan"), 4.0)
    journal = run_dir / "alerts.jsonl"
    assert stat.S_IMODE(os.stat(journal).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(run_dir).st_mode) == 0o700
    lines = [json.loads(line) for line in journal.read_text().splitlines()]  # strict JSON, NaN as text
    assert [(a["severity"], a["source"]) for a in lines] == [("CRITICAL", "weights"), ("CRITICAL", "perplexity")]
    history = safety.get_alert_history()
    assert [(a["timestamp"], a["message"]) for a in lines] == [(a["timestamp"], a["message"]) for a in history]
    assert lines[1]["value"] == "nan" and lines[1]["baseline"] == 4.0


def test_broken_listener_does_not_stop_alerts(tiny_qwen2):
    safety = SafetyMonitor()
    safety.add_alert_listener(lambda alert: 1 / 0)
    heard = []
    safety.add_alert_listener(heard.append)
    safety.raise_alert("high", "operator note", source="engine")
    assert heard[0]["severity"] == "HIGH" and heard[0]["message"] == "operator note"


def test_activation_monitor_under_inference_mode_and_bf16():
    model = make_tiny_qwen2().to(torch.bfloat16)
    safety = SafetyMonitor()
    safety.attach_activation_monitor(model)
    with torch.inference_mode():  # the buffers must stay usable outside inference mode
        model(IDS)
    assert safety.check_model_health(model)["status"] == "OK"
    model(IDS)
    with torch.no_grad():
        model.model.layers[0].self_attn.v_proj.weight[0, 0] = float("nan")
    with torch.inference_mode():
        model(IDS)
    result = safety.check_model_health(model)
    assert checks(result, "activation_nan")[0]["layer"] == "model.layers.0"
