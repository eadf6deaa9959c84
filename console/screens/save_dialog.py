"""Save dialog: asks for the checkpoint's purpose; Enter on an empty field takes the default."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label

DEFAULT_PURPOSE = "Manual checkpoint"


class SaveDialog(ModalScreen[str | None]):
    """Dismissed with the purpose, or None when cancelled."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without saving")]
    DEFAULT_CSS = """
    SaveDialog { align: center middle; }
    SaveDialog > Vertical { width: 70; max-width: 95%; height: auto; border: thick $primary; background: $surface; padding: 0 1; }
    SaveDialog Label { width: 1fr; }
    """

    def __init__(self, default: str = DEFAULT_PURPOSE) -> None:
        super().__init__()
        self.default = default

    def compose(self) -> ComposeResult:
        with Vertical():
            yield Label("Save a checkpoint of the live model", classes="title")
            yield Label(f"Purpose (Enter keeps “{self.default}”; Esc cancels):")
            yield Input(placeholder=self.default, id="purpose")

    @on(Input.Submitted, "#purpose")
    def _accept(self, event: Input.Submitted) -> None:
        self.dismiss(event.value.strip() or self.default)

    def action_cancel(self) -> None:
        self.dismiss(None)
