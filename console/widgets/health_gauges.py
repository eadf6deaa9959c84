"""Health gauges: status, NaN/Inf, max|w|, gradient norm, perplexity, memory; each with a sparkline."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Horizontal, Vertical
from textual.widgets import Label, Sparkline, Static

from console.console_state import ConsoleState
from console.formatting import human_bytes, number
from console.severity import HEALTH_SEVERITY, severity_style
from engine.events import HealthSnapshot

#: (row id, label, history key)
GAUGES = (
    ("status", "status", "issues"),
    ("nonfinite", "NaN/Inf", "nonfinite"),
    ("max_abs", "max|w|", "max_abs"),
    ("grad", "grad norm", "grad"),
    ("ppl", "perplexity", "ppl"),
    ("device_mem", "device mem", "device_mem"),
    ("host_mem", "host mem", "host_mem"),
)


class GaugeRow(Horizontal):
    DEFAULT_CSS = """
    GaugeRow { height: 1; }
    GaugeRow > .gauge-label { width: 11; color: $text-muted; }
    GaugeRow > .gauge-value { width: 24; }
    GaugeRow > Sparkline { width: 1fr; height: 1; }
    """

    def __init__(self, row_id: str, label: str) -> None:
        super().__init__(id=f"gauge-{row_id}")
        self.label = label

    def compose(self) -> ComposeResult:
        yield Label(self.label, classes="gauge-label")
        yield Static("—", classes="gauge-value")
        yield Sparkline([], summary_function=max)

    def show(self, value: Text | str, history: list[float]) -> None:
        self.query_one(".gauge-value", Static).update(value)
        self.query_one(Sparkline).data = history


class HealthGauges(Vertical):
    DEFAULT_CSS = """
    HealthGauges { height: auto; }
    """

    def compose(self) -> ComposeResult:
        for row_id, label, _ in GAUGES:
            yield GaugeRow(row_id, label)

    def show(self, state: ConsoleState) -> None:
        h = state.health
        if h is None:
            return
        values = self._values(h)
        for row_id, _, history_key in GAUGES:
            row = self.query_one(f"#gauge-{row_id}", GaugeRow)
            row.show(values[row_id], list(state.history[history_key]))

    def _values(self, h: HealthSnapshot) -> dict[str, Text | str]:
        app = self.app
        status = Text(f" {h.status} ", severity_style(app, HEALTH_SEVERITY.get(h.status, "HIGH"), badge=True))
        status.append(f" {h.issues} issue{'s' if h.issues != 1 else ''}")
        nonfinite = Text(f"{h.nan_count} NaN  {h.inf_count} Inf")
        if h.nan_count or h.inf_count:
            nonfinite.stylize(severity_style(app, "CRITICAL"))
        ppl = Text(number(h.perplexity))
        if h.perplexity is not None and h.baseline_perplexity:
            change = h.perplexity / h.baseline_perplexity - 1.0
            sev = "CRITICAL" if change > 0.5 else "MEDIUM" if change > 0.1 else "INFO"
            ppl.append(f" ({change:+.0%} vs {number(h.baseline_perplexity)})", severity_style(app, sev))
        if h.device_memory_used is None:
            device = "n/a (no GPU)"
        else:
            device = f"{human_bytes(h.device_memory_used)} / {human_bytes(h.device_memory_total)}"
        host = f"{human_bytes(h.host_memory_used)} / {human_bytes(h.host_memory_total)}"
        return {
            "status": status,
            "nonfinite": nonfinite,
            "max_abs": number(h.max_abs_weight),
            "grad": number(h.grad_norm),
            "ppl": ppl,
            "device_mem": device,
            "host_mem": host,
        }
