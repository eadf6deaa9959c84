"""Compare view: the most-changed tensors between the baseline and the selected checkpoint."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label

from console.text import visible
from console.widgets.change_bars import ChangeBars


class CompareView(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,d", "close", "Close", tooltip="Back to the console")]
    DEFAULT_CSS = """
    CompareView { align: center middle; }
    CompareView > Vertical { width: 120; max-width: 98%; height: auto; max-height: 95%; border: thick $accent; background: $surface; padding: 0 1; }
    CompareView VerticalScroll { height: auto; max-height: 40; }
    CompareView .title { text-style: bold; }
    """

    def __init__(self, baseline: str, selected: str) -> None:
        super().__init__()
        self.comparison_pair = (baseline, selected)

    def compose(self) -> ComposeResult:
        baseline, selected = self.comparison_pair
        with Vertical():
            yield Label(f"baseline {visible(baseline)}  →  {visible(selected)}", classes="title", markup=False)
            with VerticalScroll():
                yield ChangeBars(self.comparison_pair, limit=30)
            yield Label("Esc closes", classes="dim")

    def action_close(self) -> None:
        self.dismiss(None)
