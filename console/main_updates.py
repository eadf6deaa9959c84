"""How the engine's events reach the main screen: answers first, panels after, steady streams at a calm pace.

A mixin of RedlineApp (which provides main, state, screen, _show_header, notify, ...). Every frame at
160x48 costs tens of milliseconds of Python on two cores, and an operator's answer waits behind any
frame being drawn, so: a state change or a command's reply is drawn in a frame of its own (one row:
the header, the save line) and the panels it changed follow in the next; behind a dialog the panels
wait until it closes; and the gauges and drift strip, whose data come every step, are redrawn at most
every STEADY_INTERVAL seconds (their latest data, never skipped at the end).
"""

from __future__ import annotations

import time

from textual.screen import ModalScreen
from textual.timer import Timer

from console.console_state import MAX_STREAM, Batch
from console.text import visible

STEADY = frozenset({"health", "drift"})  # panels fed every step
STEADY_INTERVAL = 0.5  # seconds between two redraws of those panels


class MainUpdates:
    _held: Batch | None = None  # panel changes held while a dialog covers the screen, or after an answer
    _steady_due: frozenset[str] = frozenset()  # steady panels with data not drawn yet
    _steady_timer: Timer | None = None
    _steady_drawn = 0.0  # time.monotonic() of their last redraw

    def _show_answer_first(self, batch: Batch) -> None:
        """A state change or a command's answer goes out in a frame of its own (the header, the save line:
        one row each); the panels the same events changed (tables, gauges, the stream) follow in the next."""
        self._show_header()
        batch.changed.discard("header")
        self._hold(batch)
        self.call_after_refresh(self.show_held_changes)

    def _hold(self, batch: Batch) -> None:
        """Keep a batch's panel changes for show_held_changes: behind a dialog, redrawing the screen re-tints
        all of it each frame (~70 ms at 160x48 on two cores), which made a dialog's own answer slow."""
        held = self._held or Batch()
        held.changed |= batch.changed
        held.stream = (held.stream + batch.stream)[-MAX_STREAM:]
        self._held = held
        if batch.stream:
            self._toast_critical(batch)  # a CRITICAL interrupts at once, a dialog included

    def show_held_changes(self) -> None:
        """The main screen is on top again, or an answer's frame is out: show the panel changes held."""
        if isinstance(self.screen, ModalScreen):
            return  # still covered: held until the dialog closes (MainScreen.on_screen_resume)
        held, self._held = self._held, None
        if held is not None and self.main.is_attached:
            with self.batch_update():
                self._show_main(held, toast=False)

    def _show_main(self, batch: Batch, toast: bool = True) -> None:
        main = self.main
        changed = batch.changed
        if changed & {"header", "health"}:
            self._show_header()
        if changed & STEADY:
            self._show_steady(changed & STEADY)
        if "stream" in changed:
            main.alerts.add(batch.stream)
            if toast:
                self._toast_critical(batch)
        if "checkpoints" in changed:
            main.checkpoints.show(self.state.checkpoints)
        if "coupling" in changed:
            main.coupling.show(self.state.coupling)
        if "progress" in changed:
            main.progress.show(self.state.progress)

    def _show_steady(self, names: frozenset[str]) -> None:
        """Redraw the steady panels now, or once STEADY_INTERVAL has passed since their last redraw."""
        self._steady_due |= names
        if self._steady_timer is not None:
            return
        wait = self._steady_drawn + STEADY_INTERVAL - time.monotonic()
        if wait <= 0:
            self._draw_steady()
        else:
            self._steady_timer = self.set_timer(wait, self._draw_steady)

    def _draw_steady(self) -> None:
        self._steady_timer = None
        due, self._steady_due = self._steady_due, frozenset()
        self._steady_drawn = time.monotonic()
        if not self.main.is_attached:
            return
        if "health" in due:
            self.main.gauges.show(self.state)
        if "drift" in due:
            self.main.drift.show(self.state.drift)

    def _toast_critical(self, batch: Batch) -> None:
        critical = [e for e in batch.stream if e.severity == "CRITICAL"]
        if critical:
            more = f" (+{len(critical) - 1} more)" if len(critical) > 1 else ""
            self.notify(visible(critical[-1].text) + more, title="CRITICAL", severity="error", timeout=8, markup=False)

