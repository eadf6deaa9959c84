"""The most-changed tensors between two states, drawn as horizontal bars.

A ChangeBars shows one pair of states: on mount it asks for their comparison
(a bubbling `ChangeBars.Wanted`), and the app answers with a
`ComparisonAnswered` message when the engine's ComparisonReady (or its refusal)
arrives.
"""

from __future__ import annotations

import math

from rich.text import Text
from textual.message import Message
from textual.widget import Widget

from console.formatting import number
from console.severity import severity_style
from console.text import shorten, visible
from engine.events import ComparisonReady


class ComparisonAnswered(Message, bubble=False):
    """The engine's answer for one pair: the comparison, or why there is none."""

    def __init__(self, pair: tuple[str, str], comparison: ComparisonReady | None, refused: str = "") -> None:
        super().__init__()
        self.pair = pair
        self.comparison = comparison
        self.refused = refused


class ChangeBars(Widget):
    """Bars scaled to the largest change, coloured by the severity the engine gave each change."""

    DEFAULT_CSS = """
    ChangeBars { height: auto; width: 1fr; }
    """

    class Wanted(Message):
        """The comparison of `pair` (checkpoint ids, or "current" for the live model) is needed."""

        def __init__(self, pair: tuple[str, str]) -> None:
            super().__init__()
            self.pair = pair

    def __init__(self, pair: tuple[str, str], *, limit: int = 12, id: str | None = None) -> None:
        super().__init__(id=id)
        self.pair = pair
        self.limit = limit
        self.comparison: ComparisonReady | None = None
        self.note = "waiting for the engine's comparison…"

    def on_mount(self) -> None:
        self.post_message(self.Wanted(self.pair))

    def on_comparison_answered(self, message: ComparisonAnswered) -> None:
        if message.pair != self.pair:
            return
        if message.comparison is not None:
            self.show(message.comparison)
        elif self.comparison is None:
            self.show_note(f"no comparison: {message.refused}")

    def show(self, comparison: ComparisonReady) -> None:
        self.comparison = comparison
        self.refresh(layout=True)

    def show_note(self, note: str) -> None:
        self.note = note
        self.refresh(layout=True)

    def get_content_height(self, container, viewport, width: int) -> int:
        if self.comparison is None or not self.comparison.differences:
            return 1
        return min(len(self.comparison.differences), self.limit) + 1

    def render(self) -> Text:
        c = self.comparison
        if c is None:
            return Text(self.note, "dim")
        if not c.differences:
            return Text("no tensor differs: the two states are identical", severity_style(self.app, "LOW"))
        width = max(self.size.width, 40)
        rows = c.differences[: self.limit]
        name_width = min(max(len(r.layer) for r in rows), max(12, width // 3))
        bar_width = max(width - name_width - 22, 5)
        largest = max((r.change for r in rows if math.isfinite(r.change)), default=1.0) or 1.0
        text = Text(no_wrap=True)
        text.append(f"{c.num_differences} tensor(s) differ; largest {len(rows)}:", "bold")
        for r in rows:
            finite = math.isfinite(r.change) and math.isfinite(r.relative)
            fraction = r.change / largest if finite else 1.0
            filled = max(1, round(fraction * bar_width)) if r.change else 0
            text.append(f"\n{shorten(visible(r.layer), name_width):<{name_width}} ")
            text.append("█" * filled, severity_style(self.app, r.severity))
            text.append(" " * (bar_width - filled))
            text.append(f" {number(r.change):>8} {r.relative:>7.1%}")
        return text
