"""`engine.supervise`: a user's own training loop under the engine, with real tiny models, files and sockets."""

from __future__ import annotations

import json
import threading
import time

import pytest
import torch

from console import remote_cli
from console.engine_client import EngineClient
from engine import commands as cmd
from engine import events as ev
from engine.checkpointing import CheckpointManager
from engine.runtime.socket_paths import socket_path
from engine.supervise import EmergencyStopped, RolledBack, Stopped, supervise
from tests.conftest import make_tiny_qwen2

DEADLINE = 60.0
IDS = torch.randint(0, 300, (2, 12), generator=torch.Generator().manual_seed(0))


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path_factory, monkeypatch):
    """Registry and short links in a directory of this test session, not the user's."""
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path_factory.mktemp("xdg", numbered=True)))


def train_step(model, optimizer) -> torch.Tensor:
    loss = model(input_ids=IDS, labels=IDS).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    return loss.detach()


def weights(model) -> dict[str, torch.Tensor]:
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items()}


def checkpoint_on_disk(run_dir, checkpoint_id: str) -> dict[str, torch.Tensor]:
    """The checkpoint's weights as a fresh CheckpointManager reads them from disk into a fresh model."""
    fresh = make_tiny_qwen2(seed=99)
    assert CheckpointManager(fresh, run_dir / "checkpoints", memory_snapshot=False).restore_checkpoint(checkpoint_id)
    return weights(fresh)


def assert_same(actual: dict, expected: dict) -> None:
    assert actual.keys() == expected.keys()
    for name in expected:
        assert torch.equal(actual[name], expected[name]), name


def wait_for(client: EngineClient, seen: list, predicate):
    deadline = time.monotonic() + DEADLINE
    while True:
        seen.extend(client.drain_events())
        found = [e for e in seen if predicate(e)]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"not received; last: {[e.kind for e in seen[-20:]]}"
        client.wait_events(0.1)


@pytest.mark.slow
def test_nan_in_the_loop_rolls_back_and_raises_out_of_step(tmp_path):
    model = make_tiny_qwen2().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = tmp_path / "run"
    with pytest.raises(RolledBack) as stopped:
        with supervise(model, run_dir=run_dir, auto_checkpoint_every=2) as ctx:
            for step in range(1, 10):
                loss = train_step(model, optimizer)
                if step == 3:
                    with torch.no_grad():
                        model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
                    model.model.layers[0].mlp.up_proj.weight.grad = torch.ones_like(model.model.layers[0].mlp.up_proj.weight)
                try:
                    ctx.step("train", loss=loss)
                except Stopped as exc:
                    assert step == 3 and ctx.stopped is exc
                    with pytest.raises(RolledBack):  # the run is over: every later step says so again
                        ctx.step("after")
                    raise
    assert isinstance(stopped.value, Stopped) and stopped.value.recovered
    assert "NaN" in stopped.value.reason and "optimizer" in str(stopped.value)  # its state is stale now
    restored = stopped.value.checkpoint
    entry = next(c for c in CheckpointManager(make_tiny_qwen2(), run_dir / "checkpoints").list_checkpoints()
                 if c["id"] == restored)
    assert entry["metadata"]["state"] == "auto"  # the automatic checkpoint of step 2, not the baseline
    assert_same(weights(model), checkpoint_on_disk(run_dir, restored))
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.slow
def test_healthy_loop_is_quiet_listed_by_ps_serves_a_save_and_a_pause_and_ends_with_a_final_checkpoint(tmp_path, capsys):
    model = make_tiny_qwen2().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    run_dir = tmp_path / "run"
    supervision = supervise(model, run_dir=run_dir, auto_checkpoint_every=0)
    with supervision as ctx:
        ctx.step("warm up", loss=train_step(model, optimizer))
        assert remote_cli.ps(["--json"]) == 0
        listed = json.loads(capsys.readouterr().out)
        assert [(e["supervised"], e["run_dir"], e["experiment"]) for e in listed] == \
               [("test_supervise.py", str(run_dir), "test_supervise.py")]
        client = EngineClient(socket_path(run_dir), name="test console")
        client.start()
        seen: list = []
        save_id = client.submit(cmd.Save(purpose="from the console"))
        commands = supervision.engine.core.commands
        deadline = time.monotonic() + DEADLINE
        while commands.empty():  # the save waits in the engine's queue for the script's next step
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ctx.step("train", loss=train_step(model, optimizer))
        done = wait_for(client, seen, lambda e: isinstance(e, ev.CommandDone) and e.command_id == save_id)
        assert done.ok and done.result
        pause_id = client.submit(cmd.Pause())
        while commands.empty():
            assert time.monotonic() < deadline
            time.sleep(0.01)

        def resume_once_paused():
            wait_for(client, seen, lambda e: isinstance(e, ev.EngineStateChanged) and e.state is ev.EngineState.PAUSED)
            client.submit(cmd.Resume())

        resumer = threading.Thread(target=resume_once_paused)
        resumer.start()
        ctx.step("train", loss=train_step(model, optimizer))  # holds here until the console resumes
        resumer.join(DEADLINE)
        assert wait_for(client, seen, lambda e: isinstance(e, ev.CommandDone) and e.command_id == pause_id).ok
        wait_for(client, seen, lambda e: isinstance(e, ev.EngineStateChanged) and e.state is ev.EngineState.RUNNING
                 and e.detail.startswith("resumed"))
        ctx.step("train", loss=train_step(model, optimizer))
        client.shutdown()
    published = supervision.engine.drain_events()
    loud = [e.message for e in published if isinstance(e, ev.Alert) and e.severity in ("HIGH", "CRITICAL")]
    assert loud == []
    assert [e.outcome for e in published if isinstance(e, ev.RunOutcome)] == ["finished"]
    listed = CheckpointManager(make_tiny_qwen2(), run_dir / "checkpoints").list_checkpoints()
    states = [c["metadata"]["state"] for c in listed]
    assert states[0] == "baseline" and states[-1] == "shutdown" and done.result in [c["id"] for c in listed]
    assert_same(weights(model), checkpoint_on_disk(run_dir, listed[-1]["id"]))
    assert not socket_path(run_dir).exists()
    assert remote_cli.ps(["--json"]) == 0 and json.loads(capsys.readouterr().out) == []


@pytest.mark.slow
def test_emergency_stop_from_a_console_in_the_middle_of_a_forward_pass(tmp_path):
    model = make_tiny_qwen2().train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    run_dir = tmp_path / "run"
    supervision = supervise(model, run_dir=run_dir, auto_checkpoint_every=1)
    with supervision as ctx:
        ctx.step("train", loss=train_step(model, optimizer))  # automatic checkpoint of step 1
        train_step(model, optimizer)  # changes the weights again
        changed = weights(model)
        client = EngineClient(socket_path(run_dir), name="test console")
        client.start()
        signal = supervision.engine.core.signal

        def press_ctrl_x(module, args, output):
            client.emergency_stop("ctrl+x in the test")
            deadline = time.monotonic() + DEADLINE
            while not signal.requested:  # the console's stop has reached the engine
                assert time.monotonic() < deadline
                time.sleep(0.01)

        first_layer = model.model.layers[0]
        first_layer.register_forward_hook(press_ctrl_x)
        with pytest.raises(EmergencyStopped) as stopped:
            model(input_ids=IDS)
        client.shutdown()
    assert stopped.value.reason.startswith("ctrl+x in the test")  # the server adds which console
    assert stopped.value.checkpoint
    restored = weights(model)
    assert_same(restored, checkpoint_on_disk(run_dir, stopped.value.checkpoint))
    assert any(not torch.equal(restored[name], changed[name]) for name in changed)
    assert all(p.grad is None for p in model.parameters())


def test_the_guides_continuous_monitoring_loop_runs_with_only_the_with_line_added(tmp_path, capsys):
    from engine.safety_monitor import SafetyMonitor

    model = make_tiny_qwen2()
    safety = SafetyMonitor()
    checkpointer = CheckpointManager(model, tmp_path / "own-checkpoints")
    baseline_id = checkpointer.save_checkpoint({"purpose": "the script's own baseline"})
    original = weights(model)
    num_epochs = 5

    def modify_layer(epoch: int) -> None:
        with torch.no_grad():
            model.model.layers[1].mlp.up_proj.weight.mul_(1.01)
            if epoch == 2:
                model.model.layers[1].mlp.up_proj.weight[0, 0] = float("inf")

    run_dir = tmp_path / "run"
    supervision = supervise(model, run_dir=run_dir)
    with supervision as ctx:  # the only line added to the guide's loop
        # Monitor during modification loop
        for epoch in range(num_epochs):
            # Make modification
            modify_layer(epoch)

            # Check health
            result = safety.check_model_health(model)

            if result['status'] == 'CRITICAL':
                print("🚨 CRITICAL ISSUE DETECTED")
                # Automatic rollback
                checkpointer.restore_checkpoint(baseline_id)
                break
            elif result['status'] == 'WARNING':
                print(f"⚠️  WARNING: {result['message']}")
                # Log but continue
    assert epoch == 2 and "CRITICAL ISSUE DETECTED" in capsys.readouterr().out
    assert ctx.stopped is None
    assert_same(weights(model), original)
    published = supervision.engine.drain_events()
    assert [e.outcome for e in published if isinstance(e, ev.RunOutcome)] == ["finished"]
    states = [c["metadata"]["state"] for c in CheckpointManager(make_tiny_qwen2(), run_dir / "checkpoints").list_checkpoints()]
    assert states == ["baseline", "shutdown"]


def test_redline_stop_ends_a_loop_that_never_calls_step_with_the_final_checkpoint(tmp_path):
    from engine.supervise import ShutdownRequested

    model = make_tiny_qwen2()
    run_dir = tmp_path / "run"
    answers: list[int] = []
    stopper = threading.Thread(target=lambda: answers.append(remote_cli.stop([str(run_dir)])))
    with pytest.raises(ShutdownRequested) as stopped:
        with supervise(model, run_dir=run_dir, stop_grace=0.1):
            stopper.start()
            deadline, busy = time.monotonic() + DEADLINE, 0
            while time.monotonic() < deadline:  # pure Python (no torch state to leave half-set): no step(), no forward
                busy += sum(range(100))
    stopper.join(DEADLINE)
    assert answers == [0]
    final = stopped.value.checkpoint
    listed = CheckpointManager(make_tiny_qwen2(), run_dir / "checkpoints").list_checkpoints()
    assert listed[-1]["id"] == final and listed[-1]["metadata"]["state"] == "shutdown"
    assert_same(weights(model), checkpoint_on_disk(run_dir, final))


def test_bad_options_and_an_unusable_policy_are_clear_errors_that_leave_nothing_served(tmp_path):
    from engine.runtime.registry import live_engines
    from engine.runtime.supervised_core import SupervisedStartError

    model = make_tiny_qwen2()
    with pytest.raises(TypeError, match="no option 'device': the model stays on the device"):
        supervise(model, device="cuda")
    with pytest.raises(TypeError, match="no option 'max_step'.*auto_checkpoint_every"):
        supervise(model, max_step=3)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        supervise("Qwen/Qwen2.5-0.5B")
    policy = tmp_path / "policy.toml"
    policy.write_text("[thresholds]\nmax_weight_valu = 3\n")
    run_dir = tmp_path / "run"
    with pytest.raises(SupervisedStartError, match="max_weight_valu"):
        with supervise(model, run_dir=run_dir, policy_file=policy):
            pytest.fail("the block must not run")
    assert live_engines() == [] and not socket_path(run_dir).exists()


def test_an_edit_then_an_exception_leaving_the_block_is_recorded_rolled_back_and_reraised(tmp_path):
    model = make_tiny_qwen2()
    original = weights(model)
    run_dir = tmp_path / "run"
    supervision = supervise(model, run_dir=run_dir)
    with pytest.raises(ValueError, match="bad batch"):
        with supervision as ctx:
            with ctx.edit("scale up_proj", layer=1):
                with torch.no_grad():
                    model.model.layers[1].mlp.up_proj.weight.mul_(1.1)
            ctx.step("after the edit")
            assert [entry.description for entry in ctx.journal.list()] == ["scale up_proj"]
            raise ValueError("bad batch")
    published = supervision.engine.drain_events()
    outcome = [e for e in published if isinstance(e, ev.RunOutcome)][-1]
    assert outcome.outcome == "failed" and "bad batch" in outcome.detail
    assert any(isinstance(e, ev.Alert) and "raised ValueError: bad batch" in e.message for e in published)
    assert_same(weights(model), original)  # rolled back to the baseline, the newest good checkpoint
    states = [c["metadata"]["state"] for c in CheckpointManager(make_tiny_qwen2(), run_dir / "checkpoints").list_checkpoints()]
    assert states == ["baseline", "forensic", "shutdown"]
