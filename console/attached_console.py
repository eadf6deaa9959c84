"""What the console does only when attached to an engine over its socket (console.engine_client).

A mixin of RedlineApp: the source wakes the UI when events arrive (instead of
the 10 Hz poll), `q` asks whether to stop the engine or detach, and an
observer can take control.
"""

from __future__ import annotations

import time

from textual.message import Message

from console.event_source import describe
from console.screens.confirm import ConfirmScreen
from console.screens.quit_dialog import DETACH, STOP, QuitDialog
from console.text import visible
from engine import commands as cmd
from engine.events import CommandDone

EXIT_OK = 0
EXIT_NO_FINAL_CHECKPOINT = 5  # the engine's final checkpoint was due and not written (as in headless mode)
WAKE_GAP = 0.02  # at least this long between two wake-up drains: a fast engine never gets a redraw per step


class EventsArrived(Message):
    """The source woke the UI from its own thread: events arrived since the last drain."""


class AttachedConsole:
    """Mixed into RedlineApp (which provides source, state, send, pump, notify, ...)."""

    _last_pump = 0.0
    _wake_scheduled = False
    _stopping_engine = False  # q then y: waiting for the engine's answer to its Shutdown
    engine_stopped = False  # the attached engine confirmed its stop (so no reattach hint)

    def wake(self) -> None:
        """Called by the source from its reader thread; post_message is thread-safe."""
        self.post_message(EventsArrived())

    def on_events_arrived(self, _message: EventsArrived) -> None:
        """The source has new events: drain now, or WAKE_GAP after the last drain; at once while an
        operator waits for an answer (a command sent, an emergency stop) whatever the gap."""
        if self.awaiting_answer():
            self.pump()
            return
        if self._wake_scheduled:
            return
        wait = self._last_pump + WAKE_GAP - time.monotonic()
        if wait <= 0:
            self.pump()
        else:
            self._wake_scheduled = True

            def later() -> None:
                self._wake_scheduled = False
                self.pump()

            self.set_timer(wait, later)

    def ask_stop_or_detach(self) -> None:
        can_stop = not self.readonly and getattr(self.source, "role", "") == "controller"

        def chosen(answer: str | None) -> None:
            if answer == DETACH:
                self.stop_and_exit(EXIT_OK, "detached")
            elif answer == STOP:
                self._stop_engine()

        self.push_screen(QuitDialog(describe(self.source), self.state.experiment_active, can_stop), chosen)

    def _stop_engine(self) -> None:
        """q then y on an attached console: the engine stops safely (final checkpoint), then this console quits."""
        if self.send(cmd.Shutdown(), self._engine_stop_answered) is None:
            return
        self._shutting_down = self._stopping_engine = True
        self.notify("Stopping the engine safely (final checkpoint)…", timeout=60)

    def _engine_stop_answered(self, done: CommandDone) -> None:
        self._stopping_engine = False
        if not done.ok and done.message.startswith("refused"):
            self._shutting_down = False
            self.notify(visible(f"stop {done.message}"), severity="error", markup=False)
            return
        self.engine_stopped = True
        code = EXIT_OK if done.ok and done.result else EXIT_NO_FINAL_CHECKPOINT
        self.exit_reason = "" if code == EXIT_OK else f"the engine stopped without a final checkpoint: {done.message}"
        self._shutdown_engine(code)

    def action_take_control(self) -> None:
        if getattr(self.source, "role", "") == "controller":
            self.notify("This console already has control.", timeout=3)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.source.take_control()

        self.push_screen(ConfirmScreen("Take control of the engine?", [
            "This console becomes the controller (save, restore, pause, stop); the console that has control "
            "now becomes an observer and is told."], yes="Take control", no="Cancel"), answered)

    def check_engine_gone(self) -> None:
        """Once a second while stopping: the engine went away without answering (exit 5)."""
        if self._stopping_engine and not self.source.is_alive():
            self._stopping_engine = False
            why = getattr(self.source, "closed_reason", "") or "the connection closed"
            self.exit_reason = (why if "final checkpoint" in why else
                                f"the engine went away before confirming its final checkpoint ({why}); check `redline ps`")
            self._shutdown_engine(EXIT_NO_FINAL_CHECKPOINT)
