"""Literal text, the event codec and reading recordings back."""

from __future__ import annotations

import json

import pytest

from engine.codec import EVENT_TYPES, decode_event
from console.replay import ReplayError, ReplaySource, read_recording
from console.text import literal, visible
from engine import commands as cmd
from engine import events as ev


def test_control_characters_become_visible():
    assert visible("a\x1b[2Jb") == "a␛[2Jb"
    assert visible("bell\x07 nul\x00 del\x7f c1\x9b") == "bell␇ nul␀ del␡ c1\ufffd"
    assert visible("tab\tend") == "tab␉end"
    assert visible("tab\tend", keep_tabs=True) == "tab    end"


def test_bidirectional_controls_cannot_reorder_what_is_shown():
    assert visible("safe\u202eevil\u2066x\u200f") == "safe<U+202E>evil<U+2066>x<U+200F>"


def test_markup_is_not_interpreted():
    text = literal("[bold red]alarm[/] :warning:")
    assert text.plain == "[bold red]alarm[/] :warning:"
    assert text.spans == []


SAMPLES = [
    ev.EngineStateChanged(ev.EngineState.RUNNING, "detail", "demo", "cpu", "float32", "demo", 3, "s", 1.0),
    ev.HealthSnapshot("WARNING", 1, 2, 3.5, None, 12.0, 11.0, None, None, 5, 6, 1, 0.5, 7),
    ev.Alert("HIGH", "m\x1b", "src"),
    ev.CheckpointList((ev.CheckpointInfo("a", 1.0, "p", "baseline", 10, True, "OK", ("t1", "t2"), "{}"),), 10),
    ev.CheckpointSaved(ev.CheckpointInfo("b", 2.0, verified=None), origin="external", seconds=0.1),
    ev.CheckpointRestored("b", False, "bad hash", 0.2),
    ev.CheckpointDeleted("b"),
    ev.ComparisonReady("a", "current", 1, (ev.TensorChange("w", float("nan"), 0.5),)),
    ev.CouplingView((("x", "y"),), ("s",), 2, ("r",)),
    ev.Progress("load", 1.0, None, "m"),
    ev.ExperimentStep("demo", 4, "n"),
    ev.LogLine("text"),
    ev.CommandDone(3, "save", True, "", "checkpoint_x"),
    ev.RunOutcome("finished", "demo", 3, "done"),
    ev.RollbackMemory(False, 140 << 30, 64 << 30, "fast rollback: off: the model exceeds the budget"),
    ev.HealthSnapshot("OK", gauges=(ev.Gauge("ppl", "perplexity", "12.6", "LOW", 12.6, "(+7% vs 11.8)"),)),
    ev.EditRecorded(ev.EditInfo(2, "edit", "d\x1b", "committed", 1.0, (ev.EditTensorInfo("w", 0.1, float("inf")),),
                                gate="g", reverted_by=3, checkpoint="c")),
    ev.RevertPlanned(2, (3, 2), ("w",), (3,)),
    ev.PolicyInfo((ev.PolicyRule("spike", True, "z=6", "CRITICAL->rollback"),), (ev.PolicySetting("z", "6"),)),
    ev.DriftMap("b", (ev.LayerDrift("model.layers.0", float("inf"), "w", False, "CRITICAL"),)),
]


def test_every_event_kind_has_a_sample():
    assert {type(s).kind for s in SAMPLES} == set(EVENT_TYPES)


@pytest.mark.parametrize("event", SAMPLES, ids=lambda e: type(e).kind)
def test_events_survive_a_json_round_trip(event):
    back = decode_event(json.loads(event.to_json()))
    assert type(back) is type(event)
    assert back.to_json() == event.to_json()  # NaN included, which == would not see as equal


def test_unknown_kinds_are_none_and_bad_fields_are_errors():
    assert decode_event({"event": "from_the_future", "x": 1}) is None
    with pytest.raises(ValueError, match="EngineStateChanged.state"):
        decode_event({"event": "state", "state": "dancing"})
    with pytest.raises(ValueError, match="'event' key"):
        decode_event({"state": "idle"})


def test_a_recording_with_damaged_lines_keeps_the_good_ones(tmp_path):
    good = ev.Alert("LOW", "kept", time=5.0)
    path = tmp_path / "run.jsonl"
    path.write_text(
        '{"redline": "header"}\n' + good.to_json() + "\n{not json\n" + '{"event": "nope"}\n\n'
        + ev.LogLine("last", time=6.0).to_json()[:-3] + "\n",  # a line cut short by a crash
        encoding="utf-8",
    )
    events, skipped = read_recording(path)
    assert events == [good]
    assert len(skipped) == 3 and skipped[0].startswith("line 3: not JSON")

    source = ReplaySource(path)
    source.start()
    drained = source.drain_events()
    assert drained[0].source == "replay" and "3 line(s)" in drained[0].message
    assert drained[1:] == [good]


def test_unreadable_recordings_are_clear_errors(tmp_path):
    with pytest.raises(ReplayError, match="no such file"):
        ReplaySource(tmp_path / "missing.jsonl")
    (tmp_path / "empty.jsonl").write_text("hello\n")
    with pytest.raises(ReplayError, match="holds no redline events"):
        ReplaySource(tmp_path / "empty.jsonl")


def test_replay_refuses_commands_and_follows_its_own_clock(recording):
    source = ReplaySource(recording)
    assert source.drain_events() == []  # nothing before start
    source.start()
    events = source.drain_events(max_events=3)
    assert len(events) == 3 and source.now() == events[-1].time
    command_id = source.submit(cmd.Save())
    done = source.drain_events(max_events=1)[0]
    assert done == ev.CommandDone(command_id, "save", ok=False, message="a replay is read-only", time=done.time)
    rest = source.drain_events()
    assert source.state is ev.EngineState.RUNNING
    assert source.now() == max(e.time for e in rest)


def test_replay_at_a_speed_holds_back_future_events(recording):
    source = ReplaySource(recording, speed=1e-6)  # a million times slower than recorded
    source.start()
    first = source.drain_events()
    assert len(first) >= 1 and all(e.time == first[0].time for e in first)
