"""The checkpoint table: every checkpoint of the run directory, newest first, live.

The purpose comes last so the short columns stay visible in a narrow panel. Every cell is a
rich Text: DataTable parses a plain string as markup (and emoji codes), which is the larger part
of adding a thousand rows on attach, and would misread a "[" in a name.
"""

from __future__ import annotations

import re
import time

from rich.text import Text
from textual.widgets import DataTable

from console.formatting import human_bytes
from console.severity import severity_style
from console.text import shorten, visible
from engine.events import CheckpointInfo
from engine.policy import CHECKPOINT_STATE_SEVERITY

_ID = re.compile(r"^checkpoint_\d{8}_\d{6}_([0-9a-f]{8})$")


def short_id(checkpoint_id: str) -> str:
    """The 8 hex digits that tell checkpoints apart (the rest is the time column)."""
    match = _ID.match(checkpoint_id)
    return match.group(1) if match else visible(checkpoint_id)


class CheckpointTable(DataTable):
    DEFAULT_CSS = """
    CheckpointTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: tuple[CheckpointInfo, ...] = ()

    def on_mount(self) -> None:
        self.add_columns("id", "time", "state", "size", "verified", "purpose")

    @property
    def selected_id(self) -> str | None:
        if not self.row_count:
            return None
        row_key, _ = self.coordinate_to_cell_key((self.cursor_row, 0))
        return row_key.value

    def show(self, checkpoints: tuple[CheckpointInfo, ...]) -> None:
        if checkpoints == self._shown:
            return
        selected = self.selected_id
        self._shown = checkpoints
        self.clear()
        for info in reversed(checkpoints):
            self.add_row(*self._cells(info), key=info.id)
        if selected is not None and selected in {c.id for c in checkpoints}:
            self.move_cursor(row=self.get_row_index(selected), animate=False)

    def redraw(self) -> None:
        """Draw the rows again (colours follow the theme)."""
        shown, self._shown = self._shown, ()
        self.show(shown)

    def _cells(self, info: CheckpointInfo) -> tuple[Text, ...]:
        severity = CHECKPOINT_STATE_SEVERITY.get(info.state)
        state_style = severity_style(self.app, severity) if severity else ""
        verified = {True: Text("yes"), False: Text("FAILED", severity_style(self.app, "CRITICAL")), None: Text("–")}[
            info.verified
        ]
        return (
            Text(short_id(info.id)),
            Text(time.strftime("%m-%d %H:%M:%S", time.localtime(info.created))),
            Text(visible(info.state), state_style),
            Text(human_bytes(info.size_bytes)),
            verified,
            Text(shorten(visible(info.purpose), 60)),
        )
