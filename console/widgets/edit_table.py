"""The edit journal as a table: one row per entry, newest first, live.

Columns: id, outcome (reverted edits say by which entry), the largest ||dW||/||W|| among the
tensors it touched, how many tensors, and the description last so it takes what width is left.
"""

from __future__ import annotations

import time

from rich.text import Text
from textual.widgets import DataTable

from console.severity import severity_style
from console.text import shorten, visible
from engine.events import EditInfo
from engine.policy import EDIT_OUTCOME_SEVERITY


def outcome_label(info: EditInfo) -> str:
    """committed | rejected | failed | reverted by N | revert of N."""
    if info.entry == "revert":
        return f"revert of {info.reverts}"
    if info.reverted_by is not None:
        return f"reverted ({info.reverted_by})"
    return info.outcome


def largest_change(info: EditInfo) -> float | None:
    values = [t.relative for t in info.tensors if t.relative is not None]
    return max(values) if values else None


class EditTable(DataTable):
    DEFAULT_CSS = """
    EditTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: tuple[EditInfo, ...] = ()

    def on_mount(self) -> None:
        self.add_columns("id", "time", "outcome", "max Δ/W", "n", "description")

    @property
    def selected_id(self) -> int | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key((self.cursor_row, 0))
        return int(row_key.value)

    def show(self, edits: tuple[EditInfo, ...]) -> None:
        if edits == self._shown:
            return
        selected = self.selected_id
        self._shown = edits
        self.clear()
        for info in reversed(edits):
            self.add_row(*self._cells(info), key=str(info.id))
        if selected is not None and any(e.id == selected for e in edits):
            self.move_cursor(row=self.get_row_index(str(selected)), animate=False)

    def redraw(self) -> None:
        """Draw the rows again (colours follow the theme)."""
        shown, self._shown = self._shown, ()
        self.show(shown)

    def _cells(self, info: EditInfo) -> tuple[Text, ...]:
        """Text cells only: DataTable would parse a plain string as markup (slow, and wrong for a "[")."""
        label = outcome_label(info)
        severity = EDIT_OUTCOME_SEVERITY.get("reverted" if info.reverted_by is not None else info.outcome)
        change = largest_change(info)
        return (
            Text(str(info.id)),
            Text(time.strftime("%H:%M:%S", time.localtime(info.created))),
            Text(label, severity_style(self.app, severity) if severity else ""),
            Text("–" if change is None else f"{change:.3g}"),
            Text(str(len(info.tensors))),
            Text(shorten(visible(info.description), 60)),
        )
