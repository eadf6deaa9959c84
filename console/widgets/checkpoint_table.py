"""The checkpoint table: every checkpoint of the run directory, newest first, live.

The purpose comes last so the short columns stay visible in a narrow panel, and the others are
kept short so that it shows at all in a side-by-side panel: the time without the date when it
is today, and no size column (every checkpoint of one model references the same tensor bytes;
the confirmation before a restore shows it, the panel's title the store's size). Every cell is a
rich Text: DataTable parses a plain string as markup (and emoji codes), which is the larger part
of adding a thousand rows on attach, and would misread a "[" in a name.
"""

from __future__ import annotations

import re
import time

from rich.text import Text
from textual.timer import Timer
from textual.widgets import DataTable

from console.severity import severity_style
from console.text import shorten, visible
from engine.events import CheckpointInfo
from engine.policy import CHECKPOINT_STATE_SEVERITY

_ID = re.compile(r"^checkpoint_\d{8}_\d{6}_([0-9a-f]{8})$")


def short_id(checkpoint_id: str) -> str:
    """The 8 hex digits that tell checkpoints apart (the rest is the time column)."""
    match = _ID.match(checkpoint_id)
    return match.group(1) if match else visible(checkpoint_id)


def saved_at(epoch: float, today: tuple[int, int]) -> str:
    """HH:MM:SS for a checkpoint saved today, MM-DD HH:MM for an older one."""
    saved = time.localtime(epoch)
    if (saved.tm_yday, saved.tm_year) == today:
        return time.strftime("%H:%M:%S", saved)
    return time.strftime("%m-%d %H:%M", saved)


def _seconds_to_midnight(now: time.struct_time) -> float:
    return 86400 - (now.tm_hour * 3600 + now.tm_min * 60 + now.tm_sec)


class CheckpointTable(DataTable):
    DEFAULT_CSS = """
    CheckpointTable { height: 1fr; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=True)
        self._shown: tuple[CheckpointInfo, ...] = ()
        self._today = (0, 0)  # (day of year, year) when the rows were made
        self._midnight: Timer | None = None

    def on_mount(self) -> None:
        self.add_columns("id", "time", "state", "verified", "purpose")

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
        now = time.localtime()
        self._today = now.tm_yday, now.tm_year
        if self._midnight is not None:
            self._midnight.stop()
        # at midnight today's times lose their implied date: draw them again with it
        self._midnight = self.set_timer(_seconds_to_midnight(now) + 1, self.redraw)
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
            Text(saved_at(info.created, self._today)),
            Text(visible(info.state), state_style),
            verified,
            Text(shorten(visible(info.purpose), 60)),
        )
