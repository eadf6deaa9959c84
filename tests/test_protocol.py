"""engine.protocol: every event and command round-trips; bad input of every kind is a ProtocolError."""

from __future__ import annotations

import dataclasses
import socket

import pytest

from engine import commands as cmd
from engine import events as ev
from engine import protocol
from engine.codec import COMMAND_TYPES, EVENT_TYPES
from engine.protocol import ProtocolError


def sample_events() -> list[ev.Event]:
    info = ev.CheckpointInfo(id="checkpoint_20260101_000000_0badf00d", created=1.5, purpose="p", state="baseline",
                             size_bytes=10, verified=True, health="OK", tags=("a", "b"), metadata_json='{"x": 1}')
    gauge = ev.Gauge(name="max_abs", label="max|w|", text="1.0", severity="LOW", value=1.0, note="n")
    return [
        ev.EngineStateChanged(state=ev.EngineState.RUNNING, detail="d", model="m", experiment="demo", step=3),
        ev.HealthSnapshot(status="OK", grad_norm=None, perplexity=2.5, gauges=(gauge,), step=4),
        ev.Alert(severity="HIGH", message="ünïcode ✓", source="s"),
        ev.CheckpointList(checkpoints=(info,), disk_usage=5),
        ev.CheckpointSaved(checkpoint=info, origin="external", seconds=0.5),
        ev.CheckpointRestored(checkpoint_id=info.id, ok=False, message="m"),
        ev.CheckpointDeleted(checkpoint_id=info.id),
        ev.ComparisonReady(checkpoint_a="a", checkpoint_b="current", num_differences=1,
                           differences=(ev.TensorChange(layer="l", change=1.0, relative=0.5, severity="HIGH"),)),
        ev.CouplingView(groups=(("a", "b"),), storages=("s",), coupled_modifications=2, recent=("r",)),
        ev.Progress(task="model", done=1, total=None),
        ev.ExperimentStep(experiment="e", step=7, name="n"),
        ev.RunOutcome(outcome="finished", experiment="e", steps=3),
        ev.LogLine(text="t"),
        ev.CommandDone(command_id=9, command="save", ok=True, result="r"),
        ev.EditRecorded(edit=ev.EditInfo(id=3, entry="edit", description="d", outcome="rejected", created=1.5,
                                         tensors=(ev.EditTensorInfo("w", 0.5, None),), reasons=("r",), reverts=None)),
        ev.RevertPlanned(edit_id=3, edits=(4, 3), tensors=("w",), later=(4,)),
        ev.RollbackMemory(on=False, model_bytes=140 << 30, budget_bytes=64 << 30, message="fast rollback: off"),
        ev.PolicyInfo(rules=(ev.PolicyRule("spike", False, "window=32", "CRITICAL->rollback", "m", "run dir"),),
                      settings=(ev.PolicySetting("spike.enabled", "off", "run dir", "m"),), sources=("run dir: p",)),
        ev.DriftMap(baseline="b", layers=(ev.LayerDrift("model.layers.0", 0.5, "t", True, "HIGH"),), step=2),
    ]


def test_every_event_class_is_covered_and_round_trips():
    events = sample_events()
    assert {type(e) for e in events} == set(EVENT_TYPES.values())
    for event in events:
        message = protocol.decode(protocol.encode(protocol.event_message(event)), protocol.SERVER_TYPES)
        assert protocol.read_event(message) == event


def test_every_command_class_round_trips():
    commands = [cmd.Save(purpose="x", state="manual"), cmd.Restore(checkpoint_id="c"), cmd.Delete(checkpoint_id="c"),
                cmd.Compare(checkpoint_a="a", checkpoint_b="b"), cmd.Pause(), cmd.Resume(),
                cmd.EmergencyStop(reason="r"), cmd.RunExperiment(path=None), cmd.RunExperiment(path="x.py"),
                cmd.Shutdown(checkpoint=False), cmd.PlanRevert(edit_id=3),
                cmd.RevertEdit(edit_id=3, cascade=True, expected=(4, 3))]
    assert {type(c) for c in commands} == set(COMMAND_TYPES.values())
    for i, command in enumerate(commands, 1):
        line = protocol.encode(protocol.command_message(i, command), limit=protocol.MAX_CLIENT_LINE)
        assert protocol.read_command(protocol.decode(line, protocol.CLIENT_TYPES)) == (i, command)


@pytest.mark.parametrize("record, why", [
    ({"command": "save", "purpose": 5}, "expected str"),
    ({"command": "shutdown", "checkpoint": "yes"}, "expected bool"),
    ({"command": "rm -rf"}, "unknown command"),
    ({"command": "save", "__class__": "x"}, "unknown field"),
    (["save"], "not a command record"),
    ({"command": "restore", "checkpoint_id": ["a"]}, "expected str"),
])
def test_hostile_commands_are_refused(record, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.read_command({"t": "command", "id": 1, "c": record})


@pytest.mark.parametrize("command_id", [0, -1, True, "1", 2**60, None])
def test_command_id_must_be_a_positive_int(command_id):
    with pytest.raises(ProtocolError, match="id"):
        protocol.read_command({"t": "command", "id": command_id, "c": {"command": "pause"}})


def test_bad_event_field_is_a_protocol_error():
    record = dataclasses.replace(ev.ExperimentStep(experiment="e", step=1)).to_dict()
    record["step"] = "one"
    with pytest.raises(ProtocolError, match="expected int"):
        protocol.read_event({"t": "event", "e": record})


@pytest.mark.parametrize("line, why", [
    (b"\xff\xfe{}", "not UTF-8"),
    (b"{not json", "not JSON"),
    (b"[1, 2]", "JSON object"),
    (b'{"t": "pickle"}', "unknown message type"),
    (b"[" * 100000 + b"]" * 100000, "not JSON"),
])
def test_garbage_lines(line, why):
    with pytest.raises(ProtocolError, match=why):
        protocol.decode(line, protocol.CLIENT_TYPES)


def test_hello_version_mismatch_names_both_versions():
    assert protocol.check_hello(protocol.hello(role="observer"), "engine")["role"] == "observer"
    with pytest.raises(ProtocolError, match=r"engine speaks version 99, this side speaks version 1"):
        protocol.check_hello({"t": "hello", "version": 99}, "engine")
    with pytest.raises(ProtocolError, match="did not start with a hello"):
        protocol.check_hello({"t": "command"}, "console")


def test_encode_refuses_an_oversized_message():
    with pytest.raises(ProtocolError, match="exceeds the line limit"):
        protocol.encode({"t": "bye", "reason": "x" * 100}, limit=50)


def reader_over(data: bytes, limit: int = 1000, close: bool = True) -> protocol.LineReader:
    a, b = socket.socketpair()
    b.sendall(data)
    if close:
        b.close()
    return protocol.LineReader(a, limit, chunk=7)


def test_line_reader_reads_lines_split_across_reads_then_a_clean_end():
    reader = reader_over(b'{"t":"bye"}\n{"t":"take_control"}\n')
    assert reader.read(protocol.CLIENT_TYPES) == {"t": "bye"}
    assert reader.read(protocol.CLIENT_TYPES) == {"t": "take_control"}
    assert reader.read(protocol.CLIENT_TYPES) is None


def test_line_reader_truncated_and_oversized():
    with pytest.raises(ProtocolError, match="middle of a line"):
        reader_over(b'{"t":"bye"').read_line()
    with pytest.raises(ProtocolError, match="limit of 100"):
        reader_over(b"x" * 5000, limit=100, close=False).read_line()
    with pytest.raises(ProtocolError, match="limit of 100"):
        reader_over(b"x" * 150 + b"\n", limit=100).read_line()
