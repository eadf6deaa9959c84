"""Gauges as the engine judged them, old recordings upgraded, the one confirm dialog, comparison answers."""

from __future__ import annotations

import json

from textual.app import App
from textual.widgets import Label

from console.app import RedlineApp
from engine.codec import decode_event
from console.replay import ReplaySource
from console.screens.compare_view import CompareView
from console.screens.confirm import ConfirmScreen
from console.severity import severity_colour
from console.widgets.change_bars import ChangeBars
from console.widgets.checkpoint_table import CheckpointTable
from console.widgets.health_gauges import HealthGauges
from engine import events as ev
from engine.gauges import health_gauges

WIDE = (160, 48)


def old_health_record(perplexity: float, baseline: float = 10.0, **fields) -> dict:
    """A health event as recordings made before gauges existed hold it."""
    record = ev.HealthSnapshot("OK", perplexity=perplexity, baseline_perplexity=baseline, **fields).to_dict()
    del record["gauges"]
    return record


def gauge(event: ev.HealthSnapshot, name: str) -> ev.Gauge:
    return next(g for g in event.gauges if g.name == name)


def test_an_old_health_record_gets_the_gauges_the_engine_would_have_sent():
    record = old_health_record(11.2, max_abs_weight=250.0, nan_count=3, issues=2, host_memory_used=2**30,
                               host_memory_total=2**32)
    event = decode_event(json.loads(json.dumps(record)))
    as_engine = {**record, "issues": [{}, {}]}  # the scan result the engine had: a list of issues
    assert event.gauges == health_gauges(as_engine, perplexity=11.2, baseline_perplexity=10.0)
    assert [g.name for g in event.gauges][:3] == ["status", "nonfinite", "max_abs"]
    assert gauge(event, "status").text == "OK 2 issues"
    assert gauge(event, "max_abs").severity == "HIGH" and gauge(event, "nonfinite").severity == "CRITICAL"


def test_the_perplexity_gauge_follows_the_engine_policy():
    # policy: LOW above +5 %, HIGH above +20 %, CRITICAL above +50 % (the console used MEDIUM at +10 %)
    expected = {10.4: "INFO", 10.6: "LOW", 11.5: "LOW", 12.5: "HIGH", 15.5: "CRITICAL", float("nan"): "CRITICAL"}
    for perplexity, severity in expected.items():
        event = decode_event(json.loads(json.dumps(old_health_record(perplexity))))
        assert gauge(event, "ppl").severity == severity, perplexity
    assert gauge(decode_event(old_health_record(11.5)), "ppl").note == "(+15% vs 10)"


def test_an_old_comparison_record_gets_each_change_severity():
    record = ev.ComparisonReady("a", "b", 3, (
        ev.TensorChange("w1", 1.0, 0.6), ev.TensorChange("w2", 1.0, 0.05), ev.TensorChange("w3", float("inf"), 0.0),
    )).to_dict()
    for change in record["differences"]:
        del change["severity"]
    event = decode_event(json.loads(json.dumps(record)))
    assert [c.severity for c in event.differences] == ["CRITICAL", "MEDIUM", "CRITICAL"]
    fresh = {**record, "differences": [{**record["differences"][0], "severity": "LOW"}]}
    assert decode_event(fresh).differences[0].severity == "LOW"  # a recorded severity is kept


async def test_a_gauge_the_console_never_heard_of_is_drawn_with_its_history(tmp_path):
    lines = [ev.EngineStateChanged(ev.EngineState.RUNNING, model="demo", time=1.0)]
    for step, loss in enumerate((2.0, 2.5, 4.0), 1):
        lines.append(ev.HealthSnapshot("OK", step=step, time=1.0 + step, gauges=(
            ev.Gauge("status", "status", "OK 0 issues", "INFO", 0.0),
            ev.Gauge("loss", "loss", f"{loss:.2f}", "HIGH" if loss > 3 else "INFO", loss, "(rising)"),
        )))
    path = tmp_path / "run.jsonl"
    path.write_text("".join(e.to_json() + "\n" for e in lines), encoding="utf-8")
    app = RedlineApp(ReplaySource(path))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        rows = app.main.query_one(HealthGauges).rows
        assert [str(r.label.render()) for r in rows] == ["status", "loss"]
        assert list(app.state.history["loss"]) == [2.0, 2.5, 4.0]
        assert rows[1].sparkline.data == [2.0, 2.5, 4.0]
        value = rows[1].value.render()
        assert value.plain == "4.00 (rising)"
        high = severity_colour(app, "HIGH")
        coloured = {i for span in value.spans if span.style.foreground == high for i in range(span.start, span.end)}
        assert coloured == set(range(len(value.plain)))  # value and note in the engine's severity


class Asking(App[None]):
    def __init__(self) -> None:
        super().__init__()
        self.answers: list[bool] = []

    def on_mount(self) -> None:
        self.ask()

    def ask(self) -> None:
        self.push_screen(ConfirmScreen("Really?", ["body line", "[b]shown literally[/b]"], yes="Do it"),
                         self.answers.append)


async def test_confirm_answers_yes_only_on_y():
    app = Asking()
    async with app.run_test() as pilot:
        for number, key in enumerate(("y", "n", "escape", "enter")):  # Enter presses the focused button: No
            if number:
                app.ask()
            await pilot.pause()
            assert isinstance(app.screen, ConfirmScreen)
            assert "[b]shown literally[/b]" in [str(label.render()) for label in app.screen.query(Label)]
            await pilot.press(key)
            await pilot.pause()
            assert not isinstance(app.screen, ConfirmScreen)
        assert app.answers == [True, False, False, False]


async def test_a_refused_comparison_is_shown_in_the_waiting_bars(recording):
    app = RedlineApp(ReplaySource(recording))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        app.main.query_one(CheckpointTable).focus()
        await pilot.press("d")  # the newest checkpoint: no recorded comparison with the baseline
        await pilot.pause(0.3)
        assert isinstance(app.screen, CompareView)
        bars = app.screen.query_one(ChangeBars)
        assert bars.comparison is None and bars.note == "no comparison: a replay is read-only"
