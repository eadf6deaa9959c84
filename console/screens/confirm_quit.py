"""Quit confirmation while an experiment runs; No is the default."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label


class ConfirmQuit(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", tooltip="Stop the experiment safely and quit"),
        Binding("n,escape", "answer(False)", "No", tooltip="Keep the console open"),
    ]
    DEFAULT_CSS = """
    ConfirmQuit { align: center middle; }
    ConfirmQuit > Vertical { width: 64; max-width: 95%; height: auto; border: thick $warning; background: $surface; padding: 0 1; }
    ConfirmQuit Horizontal { height: auto; align-horizontal: right; }
    ConfirmQuit Button { margin: 0 1; }
    ConfirmQuit Label { width: 1fr; }
    """

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("An experiment is running.")
            yield Label("Quit? The engine stops it at its next step, saves a checkpoint, then exits.")
            with Horizontal():
                yield Button("Quit (y)", id="yes", variant="warning")
                yield Button("Stay (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)
