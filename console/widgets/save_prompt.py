"""The save prompt: one line in the footer's place, like an editor's command line.

`s` opens it; Enter saves with the purpose typed, or the default when none was; Esc closes it. When the
engine answers, the same line says "saved <id>" for a few seconds (an editor's echo area) before the
footer comes back; "saving…" shows first only when the answer takes longer than WORKING_AFTER. It
replaces a full-screen dialog and a toast: a dialog dims and un-dims the whole screen (two full frames,
~100 ms each at 160x48 on two cores) and a toast is mounted and laid out before it shows; this line
repaints one row and never changes the layout of anything else, so the answer shows in the next frame.
"""

from __future__ import annotations

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.message import Message
from textual.timer import Timer
from textual.widgets import Input, Label

from console.widgets.paint_notice import PaintNotice

DEFAULT_PURPOSE = "Manual checkpoint"
ECHO_SECONDS = 5.0  # how long "saved <id>" stays before the footer comes back
WORKING_AFTER = 0.1  # seconds the line waits for the answer before it says the engine is working


class SaveLabel(PaintNotice, Label):
    """The question, then the engine's answer: the app waits for a frame that draws it (expect_painted)."""


class SavePrompt(Horizontal):
    """Hidden until opened. Posts Chosen with the purpose (None: cancelled) to the app directly (bubbling
    through the screen is two more hops of Textual's message queues between Enter and the save going out);
    the app sends the save first and then calls show_status or close, so the engine starts before the
    screen changes. Posts Closed when it hides."""

    BINDINGS = [Binding("escape", "cancel", "Cancel", tooltip="Close without saving")]

    class Chosen(Message):
        def __init__(self, purpose: str | None) -> None:
            super().__init__()
            self.purpose = purpose

    class Closed(Message):
        """The line is hidden again: the footer may come back."""

    def __init__(self, default: str = DEFAULT_PURPOSE, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.default = default
        self._focus_before = None  # what had the focus before the prompt took it, given back after
        self._timer: Timer | None = None
        self.echo_seconds = ECHO_SECONDS
        self._status = False  # showing a status instead of asking
        self._answered = False  # the question was answered; the line waits for the engine (await_answer)

    def compose(self) -> ComposeResult:
        yield SaveLabel(self._question(), id="save-label", markup=False)
        yield Input(placeholder=self.default, id="purpose", compact=True)

    @property
    def label(self) -> SaveLabel:
        return self.query_one(SaveLabel)

    def _question(self) -> str:
        return f" Save a checkpoint · Purpose (Enter keeps “{self.default}”; Esc cancels): "

    @property
    def is_open(self) -> bool:
        """Asking for a purpose (not showing a status)."""
        return self.has_class("-open") and not self._status and not self._answered

    def open(self) -> None:
        self._stop_timer()
        purpose = self.query_one(Input)
        purpose.value = ""
        purpose.placeholder = self.default
        self.query_one(Label).update(self._question())
        if not self.has_class("-open") or self._status:
            self._focus_before = self.screen.focused
        self._status = self._answered = False
        self.add_class("-open")
        purpose.focus()

    def show_status(self, text: str, *, stay: bool = False) -> None:
        """Show `text` where the question was, then close after `echo_seconds` (with `stay`, not until the next
        status). Nothing changes size (the text is cut to the question's width; the field is emptied, not
        hidden), so this repaints and never relays out."""
        self._stop_timer()
        self._answered = False
        self.query_one(Label).update(Text(f" {text}", no_wrap=True, overflow="ellipsis"), layout=False)
        if not self._status:
            self._status = True
            purpose = self.query_one(Input)
            purpose.value = ""
            purpose.placeholder = ""
            self._give_focus_back()
        if not stay:
            self._timer = self.set_timer(self.echo_seconds, self.close)

    def await_answer(self, working: str, after: float = WORKING_AFTER) -> None:
        """The question is answered and the engine is at work: the line shows `working` only if no answer
        (show_status) comes within `after` seconds. A quick answer is then drawn in one frame, not a frame of
        "saving…" and another of "saved" (each frame at 160x48 costs the answer ~15 ms on two cores). `working`
        stays until the answer, however long the engine takes."""
        self._stop_timer()
        self._answered = True
        self._timer = self.set_timer(after, lambda: self.show_status(working, stay=True))

    def close(self) -> None:
        self._stop_timer()
        self._status = self._answered = False
        if not self.has_class("-open"):
            return
        self.remove_class("-open")
        self._give_focus_back()
        self.post_message(self.Closed())

    def _give_focus_back(self) -> None:
        if not self.query_one(Input).has_focus:
            return
        before, self._focus_before = self._focus_before, None
        if before is not None and before.is_attached and before.focusable and before.display:
            before.focus()  # not a hidden widget (the wide layout's tabs): restyling it costs a frame
        else:
            self.screen.set_focus(None)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer = None

    @on(Input.Submitted, "#purpose")
    def _accept(self, event: Input.Submitted) -> None:
        event.stop()
        if not self._answered:  # a second Enter while the first save is on its way saves nothing more
            self.app.post_message(self.Chosen(event.value.strip() or self.default))

    def action_cancel(self) -> None:
        self.app.post_message(self.Chosen(None))
