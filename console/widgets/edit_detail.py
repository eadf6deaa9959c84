"""One edit-journal entry in full: its tensors with ||dW|| and ||dW||/||W||, the gate, the reasons."""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.formatting import date_time
from console.severity import severity_style
from console.text import visible
from console.widgets.edit_table import outcome_label
from engine.events import EditInfo
from engine.policy import EDIT_OUTCOME_SEVERITY

MAX_TENSORS = 12  # listed; the rest are counted


def describe_edit(info: EditInfo, app=None) -> Text:
    """The entry's fields, shown literally (names and descriptions come from user code)."""
    text = Text()
    severity = EDIT_OUTCOME_SEVERITY.get(info.outcome)
    text.append(f"#{info.id} ", "bold")
    text.append(outcome_label(info), severity_style(app, severity) if app is not None and severity else "")
    text.append(f"  {date_time(info.created)}\n", "dim")
    text.append(visible(info.description) + "\n")
    for reason in info.reasons:
        text.append("  ✗ " + visible(reason) + "\n", severity_style(app, severity or "MEDIUM") if app else "")
    if info.gate:
        text.append("gate: ", "dim")
        text.append(visible(info.gate) + "\n")
    if info.checkpoint:
        text.append("checkpoint: ", "dim")
        text.append(visible(info.checkpoint) + "\n")
    for t in info.tensors[:MAX_TENSORS]:
        delta = "–" if t.delta_norm is None else f"{t.delta_norm:.4g}"
        relative = "–" if t.relative is None else f"{t.relative:.3g}"
        text.append(f"  {visible(t.name)}", "")
        text.append(f"  ‖Δ‖ {delta}  Δ/W {relative}\n", "dim")
    if len(info.tensors) > MAX_TENSORS:
        text.append(f"  … and {len(info.tensors) - MAX_TENSORS} more tensors\n", "dim")
    text.rstrip()
    return text


class EditDetail(Static):
    """The selected entry of the Edits screen."""

    DEFAULT_CSS = """
    EditDetail { height: auto; max-height: 9; }
    """

    def show(self, info: EditInfo | None) -> None:
        self.update(describe_edit(info, self.app) if info is not None else Text("No edits yet.", "dim"))
