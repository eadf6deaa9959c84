"""Health gauges: one row per gauge the engine sends, in its order, each with a sparkline.

The engine builds the gauges (engine.gauges) and gives each its severity
(engine.policy); this widget draws whatever arrives, so a new gauge needs no
change here.
"""

from __future__ import annotations

from rich.text import Text
from textual.app import App, ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from console.console_state import ConsoleState
from console.severity import severity_style
from console.text import visible
from engine.events import Gauge

BADGE_GAUGES = frozenset({"status"})  # drawn as a coloured badge, like the header's status


def gauge_text(app: App, gauge: Gauge) -> Text:
    """The value in its severity's colour (plain when INFO), then the note in that colour."""
    if gauge.name in BADGE_GAUGES:
        head, _, rest = visible(gauge.text).partition(" ")
        text = Text(f" {head} ", severity_style(app, gauge.severity, badge=True))
        if rest:
            text.append(f" {rest}")
    else:
        text = Text(visible(gauge.text), severity_style(app, gauge.severity) if gauge.severity != "INFO" else "")
    if gauge.note:
        text.append(f" {visible(gauge.note)}", severity_style(app, gauge.severity))
    return text


class GaugeRow(Horizontal):
    DEFAULT_CSS = """
    GaugeRow { height: 1; }
    GaugeRow > .gauge-label { width: 11; color: $text-muted; }
    GaugeRow > .gauge-value { width: 24; }
    GaugeRow > Sparkline { width: 1fr; height: 1; }
    """

    def __init__(self) -> None:
        """The parts are made here so a row can be filled before it is mounted."""
        super().__init__()
        self.label = Label("", classes="gauge-label", markup=False)
        self.value = Static("—", classes="gauge-value")
        self.sparkline = Sparkline([], summary_function=max)

    def compose(self) -> ComposeResult:
        yield self.label
        yield self.value
        yield self.sparkline

    def show(self, label: str, value: Text, history: list[float]) -> None:
        self.label.update(label, layout=False)  # fixed width and height (DEFAULT_CSS): no relayout per health tick
        self.value.update(value, layout=False)
        self.sparkline.data = history


class HealthGauges(Vertical):
    DEFAULT_CSS = """
    HealthGauges { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.rows: list[GaugeRow] = []

    def show(self, state: ConsoleState) -> None:
        if state.health is None:
            return
        gauges = state.health.gauges
        if len(self.rows) < len(gauges):
            added = [GaugeRow() for _ in range(len(gauges) - len(self.rows))]
            self.rows += added
            self.mount_all(added)
        while len(self.rows) > len(gauges):
            self.rows.pop().remove()
        for row, gauge in zip(self.rows, gauges):
            row.show(visible(gauge.label), gauge_text(self.app, gauge), list(state.history.get(gauge.name, ())))
