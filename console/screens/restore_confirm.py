"""Restore confirmation: what the checkpoint is and what will change; No is the default."""

from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Static

from console.formatting import date_time, human_bytes
from console.screens.awaits_comparison import AwaitsComparison
from console.text import visible
from console.widgets.change_bars import ChangeBars
from engine.events import CheckpointInfo


def describe(info: CheckpointInfo) -> Text:
    """The checkpoint's fields, shown literally."""
    text = Text()
    rows = (
        ("id", info.id),
        ("saved", date_time(info.created)),
        ("purpose", info.purpose),
        ("state", info.state),
        ("size", human_bytes(info.size_bytes)),
        ("verified", {True: "yes", False: "FAILED", None: "not yet in this session"}[info.verified]),
        ("health", info.health or "unknown"),
        ("tags", ", ".join(info.tags) or "—"),
    )
    for index, (name, value) in enumerate(rows):
        if index:
            text.append("\n")
        text.append(f"{name:>9}  ", "dim")
        text.append(visible(value))
    return text


class RestoreConfirm(AwaitsComparison, ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Restore", tooltip="Restore this checkpoint into the live model"),
        Binding("n,escape", "answer(False)", "Cancel", tooltip="Keep the live model as it is"),
    ]
    DEFAULT_CSS = """
    RestoreConfirm { align: center middle; }
    RestoreConfirm > Vertical { width: 100; max-width: 98%; height: auto; max-height: 95%; border: thick $warning; background: $surface; padding: 0 1; }
    RestoreConfirm VerticalScroll { height: auto; max-height: 16; }
    RestoreConfirm Horizontal { height: auto; align-horizontal: right; }
    RestoreConfirm Button { margin: 0 1; }
    RestoreConfirm .title { text-style: bold; }
    """

    def __init__(self, info: CheckpointInfo) -> None:
        super().__init__()
        self.info = info
        self.comparison_pair = (info.id, "current")

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Restore this checkpoint into the live model?", classes="title")
            yield Static(describe(self.info))
            yield Label("What will change (live model → checkpoint):", classes="title")
            with VerticalScroll():
                yield ChangeBars(limit=10)
            with Horizontal():
                yield Button("Restore (y)", id="yes", variant="warning")
                yield Button("Cancel (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()
        self.app.request_comparison(*self.comparison_pair, self)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
