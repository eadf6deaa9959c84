"""The one yes/no dialog, and the questions the console asks with it (restore, quit).

y answers yes; n and Esc answer no; No has the focus, so Enter alone never
confirms. The dialog is dismissed with True or False.
"""

from __future__ import annotations

from collections.abc import Iterable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import ModalScreen
from textual.widget import Widget
from textual.widgets import Button, Label, Static

from console.formatting import date_time, human_bytes
from console.text import visible
from console.widgets.change_bars import ChangeBars
from engine.events import CheckpointInfo


class ConfirmScreen(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes"),
        Binding("n,escape", "answer(False)", "No"),
    ]
    DEFAULT_CSS = """
    ConfirmScreen { align: center middle; }
    ConfirmScreen > Vertical { width: 64; max-width: 98%; height: auto; max-height: 95%; border: thick $warning; background: $surface; padding: 0 1; }
    ConfirmScreen VerticalScroll { height: auto; max-height: 16; }
    ConfirmScreen Horizontal { height: auto; align-horizontal: right; }
    ConfirmScreen Button { margin: 0 1; }
    ConfirmScreen Label { width: 1fr; }
    ConfirmScreen .title { text-style: bold; }
    """

    def __init__(self, title: str, body: Iterable[str | Widget] = (), *, yes: str = "Yes", no: str = "No",
                 width: int = 64) -> None:
        """`body`: lines of text (shown literally) and widgets, in order; `yes`/`no`: the button labels."""
        super().__init__()
        self.title_text = title
        self.body = [Label(visible(part), markup=False) if isinstance(part, str) else part for part in body]
        self.yes, self.no = yes, no
        self.width = width

    def compose(self) -> ComposeResult:
        with Vertical() as box:
            box.styles.width = self.width
            yield Label(visible(self.title_text), classes="title", markup=False)
            yield from self.body
            with Horizontal():
                yield Button(f"{self.yes} (y)", id="yes", variant="warning")
                yield Button(f"{self.no} (n)", id="no", variant="primary")

    def on_mount(self) -> None:
        self.query_one("#no", Button).focus()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "yes")

    def action_answer(self, answer: bool) -> None:
        self.dismiss(answer)


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


def restore_question(info: CheckpointInfo) -> ConfirmScreen:
    """What the checkpoint is and what restoring it would change in the live model."""
    changes = Label("What will change (live model → checkpoint):", classes="title")
    return ConfirmScreen(
        "Restore this checkpoint into the live model?",
        [Static(describe(info)), changes, VerticalScroll(ChangeBars((info.id, "current"), limit=10))],
        yes="Restore", no="Cancel", width=100,
    )


def quit_question() -> ConfirmScreen:
    """Asked while an experiment runs."""
    return ConfirmScreen(
        "An experiment is running.",
        ["Quit? The engine stops it at its next step, saves a checkpoint, then exits."],
        yes="Quit", no="Stay",
    )
