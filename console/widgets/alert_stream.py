"""The alert stream: alerts, experiment log lines and checkpoint events, newest last.

Coloured by severity from the theme; levels toggled with 1–5; a text filter
(/). It follows new entries unless the operator has scrolled back.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.style import Style
from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.events import Resize
from textual.containers import Vertical
from textual.widgets import Input, RichLog, Static

from console.console_state import StreamEntry
from console.formatting import clock_time
from console.severity import severity_style
from console.widgets.stream_lines import StreamLine, StreamLines
from console.text import visible
from engine.events import SEVERITIES

SHORT = {"CRITICAL": "CRIT", "HIGH": "HIGH", "MEDIUM": "MED", "LOW": "LOW", "INFO": "INFO"}
MAX_LINES = 1000
DIM, PLAIN = Style(dim=True), Style()


class FilterInput(Input):
    BINDINGS = [Binding("escape", "clear_filter", "Clear filter", tooltip="Clear the text filter and close it")]

    def action_clear_filter(self) -> None:
        self.value = ""
        self.post_message(self.Submitted(self, ""))


class AlertStream(Vertical):
    DEFAULT_CSS = """
    AlertStream { height: 1fr; }
    AlertStream > #stream-status { height: 1; color: $text-muted; }
    AlertStream > FilterInput { display: none; height: 3; }
    AlertStream.-filtering > FilterInput { display: block; }
    AlertStream > RichLog { height: 1fr; background: $surface; }
    """

    def __init__(self, entries: Iterable[StreamEntry], *, id: str | None = None) -> None:
        """`entries`: the live collection of all entries (the console state's), for redraws."""
        super().__init__(id=id)
        self.levels: set[str] = set(SEVERITIES)
        self.text_filter = ""
        self._entries = entries
        self._shown = 0
        self._width = 0
        self._stale = False  # entries came while hidden: draw them all once shown
        self._latest: StreamEntry | None = None  # the newest entry drawn

    def compose(self) -> ComposeResult:
        yield Static(id="stream-status")
        yield FilterInput(placeholder="filter alerts (Enter keeps, Esc clears)", id="stream-filter")
        yield RichLog(max_lines=MAX_LINES, wrap=True, min_width=20, id="stream-log")

    def on_mount(self) -> None:
        self._show_status()

    def on_resize(self, event: Resize) -> None:
        """Lines are wrapped when written: wrap them again for the new width (or once first shown)."""
        if event.size.width != self._width or (self._stale and event.size.width):
            self._width = event.size.width
            self.show_all()

    @property
    def hidden(self) -> bool:
        """Not laid out, or in a panel not shown (a narrow terminal shows one panel at a time): no width to
        wrap lines to. Nothing is drawn meanwhile; the resize that shows the stream draws it whole."""
        return not self.size.width

    @property
    def log_view(self) -> RichLog:
        return self.query_one(RichLog)

    def matches(self, entry: StreamEntry) -> bool:
        level = entry.severity if entry.severity in SEVERITIES else "INFO"
        if level not in self.levels:
            return False
        if self.text_filter:
            needle = self.text_filter.casefold()
            return needle in entry.text.casefold() or needle in entry.source.casefold()
        return True

    def add(self, entries: Iterable[StreamEntry]) -> None:
        """Append new entries; scroll with them only if the view was already at the end. Entries already
        drawn (a redraw from scratch came between their arrival and this call) are skipped."""
        entries = list(entries)
        for index in range(len(entries) - 1, -1, -1):
            if entries[index] is self._latest:
                entries = entries[index + 1:]
                break
        if not entries:
            return
        self._latest = entries[-1]
        if self.hidden:
            self._stale = True
            return
        log = self.log_view
        follow = log.is_vertical_scroll_end or log.max_scroll_y == 0
        lines = [self._line(entry) for entry in entries if self.matches(entry)][-MAX_LINES:]
        self._write(lines, follow)
        self._shown = min(self._shown + len(lines), MAX_LINES)
        self._show_status()

    def _write(self, lines: list[StreamLine], follow: bool) -> None:
        """Many lines (a snapshot on attach) are written as one renderable: one layout pass, not one per line."""
        if lines:
            self.log_view.write(StreamLines(lines), scroll_end=follow)

    def show_all(self) -> None:
        """Redraw from scratch (after a filter or theme change)."""
        log = self.log_view
        log.clear()
        self._shown = 0
        self._latest = self._entries[-1] if self._entries else None
        self._stale = self.hidden
        if self._stale:
            return
        matching = [e for e in self._entries if self.matches(e)][-MAX_LINES:]
        self._write([self._line(entry) for entry in matching], follow=True)
        self._shown = len(matching)
        self._show_status()

    def toggle_level(self, severity: str) -> bool:
        """Show or hide one level; returns whether it is now shown."""
        self.levels ^= {severity}
        return severity in self.levels

    def open_filter(self) -> None:
        self.add_class("-filtering")
        self.query_one(FilterInput).focus()

    @on(Input.Changed, "#stream-filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.text_filter = event.value
        self.show_all()

    @on(Input.Submitted, "#stream-filter")
    def _filter_done(self, event: Input.Submitted) -> None:
        event.stop()
        self.text_filter = event.value
        self.remove_class("-filtering")
        self.log_view.focus()
        self.show_all()

    def _line(self, entry: StreamEntry) -> StreamLine:
        style = severity_style(self.app, entry.severity)
        return StreamLine((
            (clock_time(entry.time) + " ", DIM),
            (f"{SHORT.get(entry.severity, entry.severity[:4]):<4} ", style),
            (f"{visible(entry.source)}: ", DIM),
            (visible(entry.text), style if entry.severity in ("CRITICAL", "HIGH") else PLAIN),
        ))

    def _show_status(self) -> None:
        levels = " ".join(
            f"{i}:{SHORT[s]}" if s in self.levels else f"{i}:----" for i, s in enumerate(SEVERITIES, 1)
        )
        status = Text(f" {levels}", no_wrap=True, overflow="ellipsis")
        if self.text_filter:
            status.append("  filter: ")
            status.append(visible(self.text_filter), "bold")
        status.append(f"  ({self._shown} shown)")
        self.query_one("#stream-status", Static).update(status, layout=False)  # one line (DEFAULT_CSS)
