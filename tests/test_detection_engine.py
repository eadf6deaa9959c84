"""Detection in the running engine: real fine-tunes as experiments, judged at every ctx.step().

An SGD fine-tune whose learning rate jumps from 1e-3 to 50 must end in a
CRITICAL and a rollback within 2 steps of the jump (headless exit 1), with
finite weights and no gradients left afterwards; a healthy AdamW fine-tune
must raise nothing at HIGH or above; a policy file can turn the action down.
"""

from __future__ import annotations

import io
import json

import pytest
import torch

from engine.events import Alert, RunOutcome
from engine.runtime.headless import main as headless_main
from tests.engine_harness import engines, tiny_model_dir, write_experiment  # noqa: F401
from tests.fixtures_demo import demo_model_dir  # noqa: F401

FINETUNE = """
    import torch

    ONSET = {onset}  # the optimizer step (0-based) from which the learning rate is 50

    def run(ctx):
        model = ctx.model
        optimizer = torch.optim.{optimizer}
        order = torch.Generator().manual_seed(0)
        vocab = min(model.config.vocab_size, 256)
        model.train()
        for step in range({steps}):
            if {spike} and step == ONSET:
                for group in optimizer.param_groups:
                    group["lr"] = 50.0
                ctx.state["onset"] = ctx.steps + 1  # the ctx.step() that follows this update
            batch = torch.randint(0, vocab, (4, 32), generator=order)
            optimizer.zero_grad()
            loss = model(input_ids=batch, labels=batch, use_cache=False).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), {clip})
            optimizer.step()
            ctx.step("train", loss=loss, lr=optimizer.param_groups[0]["lr"] if not {spike} else 1.0)
"""


def _finetune(directory, *, spike: bool, steps: int, onset: int = 8):
    if spike:
        body = FINETUNE.format(onset=onset, optimizer="SGD(model.parameters(), lr=1e-3)", steps=steps,
                               spike=True, clip="1e30")
    else:
        body = FINETUNE.format(onset=onset, optimizer="AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)",
                               steps=steps, spike=False, clip="1.0")
    return write_experiment(directory, body, "finetune.py")


def _assert_clean(model: torch.nn.Module) -> None:
    for name, p in model.named_parameters():
        assert bool(torch.isfinite(p).all()), f"{name} is not finite after the rollback"
        assert p.grad is None, f"{name} still holds a gradient after the rollback"


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny", "demo"])
def test_learning_rate_spike_rolls_back_within_two_steps(engines, tiny_model_dir, demo_model_dir, tmp_path, model):
    directory = tiny_model_dir if model == "tiny" else demo_model_dir
    driver = engines(directory, tmp_path / "run", _finetune(tmp_path, spike=True, steps=20))
    assert driver.wait_outcome(timeout=300) == "rolled_back"
    onset = driver.core.runner.ctx.state["onset"] if driver.core.runner.ctx else None
    outcome = driver.of(RunOutcome)[-1]
    critical = [a for a in driver.of(Alert) if a.severity == "CRITICAL" and a.action == "rollback"]
    assert critical, driver.alert_messages()
    assert critical[0].rule in ("update_size", "baseline_departure", "spike", "nonfinite", "escalation")
    ctx_onset = 9  # ONSET (8, 0-based) + 1: the ctx.step() right after the first update at lr 50
    assert onset is None or onset == ctx_onset
    assert ctx_onset <= outcome.steps <= ctx_onset + 2, (outcome.steps, driver.alert_messages())
    _assert_clean(driver.core.model)
    messages = driver.alert_messages()
    assert any("optimizer state" in m and "stale" in m for m in messages)
    assert any("Verified" in m and "after restore" in m for m in messages)


@pytest.mark.slow
def test_healthy_finetune_raises_nothing_high(engines, tiny_model_dir, tmp_path):
    driver = engines(tiny_model_dir, tmp_path / "run", _finetune(tmp_path, spike=False, steps=30))
    assert driver.wait_outcome(timeout=300) == "finished"
    loud = [f"{a.rule}: {a.message}" for a in driver.of(Alert) if a.severity in ("HIGH", "CRITICAL")]
    assert loud == []


def test_headless_exits_1_after_the_spike_and_names_rule_and_action(tiny_model_dir, tmp_path):
    out = io.StringIO()
    experiment = _finetune(tmp_path, spike=True, steps=20)
    code = headless_main(["--headless", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "run"),
                          "--device", "cpu", "--experiment", str(experiment)], out=out)
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert code == 1
    fired = [e for e in events if e["event"] == "alert" and e["severity"] == "CRITICAL" and e["rule"]]
    assert fired and fired[0]["action"] == "rollback"
    assert (tmp_path / "run" / "baseline_stats.json").is_file()


def test_policy_file_can_make_the_spike_only_alert(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    quiet = "\n".join(f'[rules.{rule}]\nactions = {{ CRITICAL = "alert" }}' for rule in
                      ("update_size", "baseline_departure", "spike", "escalation", "nonfinite", "dead_gradients",
                       "output_collapse", "max_weight_value", "gradient_clip", "activation_spike", "perplexity"))
    (run_dir / "policy.toml").write_text(quiet)
    out = io.StringIO()
    code = headless_main(["--headless", "--model", str(tiny_model_dir), "--run-dir", str(run_dir), "--device", "cpu",
                          "--experiment", str(_finetune(tmp_path, spike=True, steps=12))], out=out)
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
    assert code == 0, [e.get("message") for e in events if e["event"] == "alert"][-8:]
    critical = [e for e in events if e["event"] == "alert" and e["severity"] == "CRITICAL" and e["rule"]]
    assert critical and all(e["action"] == "alert" for e in critical)


def test_bad_policy_file_is_bad_input(tiny_model_dir, tmp_path, capsys):
    policy = tmp_path / "bad.toml"
    policy.write_text("[rules.spike]\nzz = 3\n")
    code = headless_main(["--headless", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / "run"),
                          "--policy", str(policy)], out=io.StringIO())
    assert code == 2
    err = capsys.readouterr().err
    assert "rules.spike.zz" in err and "critical_ratio" in err
