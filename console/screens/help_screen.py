"""Help: what the console shows, and every key (generated from the bindings and the keymap in force)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Markdown, Static

from console.bindings import BINDINGS

HELP_MARKDOWN = Path(__file__).resolve().parent.parent / "help.md"


def key_table(app, keymap: dict[str, str]) -> Table:
    table = Table(box=None, pad_edge=False, show_header=True, header_style="bold", expand=True)
    table.add_column("key", no_wrap=True)
    table.add_column("action", no_wrap=True)
    table.add_column("id", style="dim", no_wrap=True)
    table.add_column("what it does", ratio=1)
    for binding in BINDINGS:
        if binding.system:
            continue
        keys = keymap.get(binding.id, binding.key).split(",")
        shown = ", ".join(app.get_key_display(binding.with_key(k.strip(), key_display=None)) for k in keys)
        table.add_row(shown, binding.description, binding.id or "", binding.tooltip)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark,f1", "close", "Close", tooltip="Back to the console")]
    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > Vertical { width: 110; max-width: 98%; height: 90%; border: thick $accent; background: $surface; }
    HelpScreen VerticalScroll { height: 1fr; padding: 0 1; }
    HelpScreen #keys { margin: 0 0 1 0; }
    """

    def __init__(self, keymap: dict[str, str]) -> None:
        super().__init__()
        self.keymap = keymap

    def compose(self) -> ComposeResult:
        with Vertical():
            with VerticalScroll():
                yield Static(key_table(self.app, self.keymap), id="keys")  # first: what help is opened for
                yield Markdown(HELP_MARKDOWN.read_text(encoding="utf-8"))

    def action_close(self) -> None:
        self.dismiss(None)
