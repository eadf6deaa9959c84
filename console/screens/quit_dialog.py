"""The question `q` asks on a console attached to an engine: stop it, detach from it, or stay.

y stops the engine safely (final checkpoint) and quits; d detaches and leaves
it running; n and Esc cancel. Cancel has the focus, so Enter alone never stops
anything. The dialog is dismissed with "stop", "detach" or None.
"""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label

from console.text import visible

STOP, DETACH = "stop", "detach"


class QuitDialog(ModalScreen[str | None]):
    BINDINGS = [
        Binding("y", "answer('stop')", "Stop engine"),
        Binding("d", "answer('detach')", "Detach"),
        Binding("n,escape", "answer(None)", "Cancel"),
    ]

    def __init__(self, engine: str, running: bool, can_stop: bool = True) -> None:
        """`engine`: how the header names it; `running`: an experiment runs; `can_stop`: this console may stop it."""
        super().__init__()
        self.engine = engine
        self.running = running
        self.can_stop = can_stop

    def compose(self) -> ComposeResult:
        doing = "An experiment is running. " if self.running else ""
        with Vertical():
            yield Label(visible(f"Quit the console on {self.engine}?"), classes="title", markup=False)
            if self.can_stop:
                yield Label(f"{doing}y: stop the engine safely (final checkpoint), then quit.", markup=False)
            yield Label("d: detach and leave the engine running; `redline attach` comes back to it.", markup=False)
            with Horizontal():
                if self.can_stop:
                    yield Button("Stop engine (y)", id="stop", variant="error")
                yield Button("Detach (d)", id="detach", variant="warning")
                yield Button("Cancel (n)", id="cancel", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#cancel", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss({"stop": STOP, "detach": DETACH}.get(event.button.id or ""))

    def action_answer(self, answer: str | None) -> None:
        if answer == STOP and not self.can_stop:
            return
        self.dismiss(answer)
