"""Progress of long engine work (model load, demo training, restore): one bar per task.

Drawn as text rather than an animated ProgressBar: no timer runs while the
engine is idle, and a recording replays to the same picture every time.
"""

from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from console.text import shorten, visible
from engine.events import Progress


class ProgressPanel(Static):
    DEFAULT_CSS = """
    ProgressPanel { height: auto; max-height: 4; display: none; background: $panel; }
    ProgressPanel.-active { display: block; }
    """

    def show(self, tasks: dict[str, Progress]) -> None:
        self.set_class(bool(tasks), "-active")
        if not tasks:
            return
        width = max(self.size.width, 40)
        bar_width = max(10, min(30, width // 3))
        text = Text(no_wrap=True, overflow="ellipsis")
        for index, p in enumerate(tasks.values()):
            if index:
                text.append("\n")
            text.append(f" {shorten(visible(p.task), 18):<18} ", "bold")
            if p.total:
                fraction = min(max(p.done / p.total, 0.0), 1.0)
                filled = round(fraction * bar_width)
                text.append("█" * filled, "bold")
                text.append("░" * (bar_width - filled), "dim")
                text.append(f" {fraction:4.0%}")
            else:
                text.append(f"{p.done:g} done", "dim")
            if p.message:
                text.append(f"  {visible(p.message)}")
        self.update(text)
