"""The weight-coupling view: tied groups, their shared storage, coupled modifications so far."""

from __future__ import annotations

from rich.text import Text
from textual.containers import VerticalScroll
from textual.widgets import Static

from console.severity import severity_style
from console.text import visible
from engine.events import CouplingView


class CouplingPanel(VerticalScroll):
    DEFAULT_CSS = """
    CouplingPanel { height: 1fr; }
    CouplingPanel > Static { width: 1fr; }
    """

    def compose(self):
        yield Static("no coupling information yet", id="coupling-text")

    def show(self, view: CouplingView | None) -> None:
        if view is None:
            return
        text = Text()
        if not view.groups:
            text.append("no tied weights: every parameter has its own storage\n")
        for index, group in enumerate(view.groups):
            text.append(f"group {index + 1}", severity_style(self.app, "MEDIUM"))
            storage = view.storages[index] if index < len(view.storages) else ""
            if storage:
                text.append(f"  {visible(storage)}", "dim")
            text.append("\n")
            for name in group:
                text.append(f"  ⇄ {visible(name)}\n")
        text.append(f"coupled modifications: {view.coupled_modifications}\n", "bold")
        for line in view.recent:
            text.append(f"  • {visible(line)}\n")
        text.rstrip()
        self.query_one("#coupling-text", Static).update(text)
