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
FRAME_WAIT = 0.25  # seconds after which work waiting for the next frame runs anyway (no frame came)
ANSWER_WAIT = 0.25  # seconds after a command is sent during which panel changes wait for its answer's frame


class MainUpdates:
    _held: Batch | None = None  # panel changes held while a dialog covers the screen, or after an answer
    _steady_due: frozenset[str] = frozenset()  # steady panels with data not drawn yet
    _steady_timer: Timer | None = None
    _steady_drawn = 0.0  # time.monotonic() of their last redraw
    _after_frame: list | None = None  # callbacks waiting for the next frame to be written
    _after_answer: list | None = None  # callbacks waiting for the engine's next state change or reply to be drawn
    _unpainted: frozenset = frozenset()  # widgets showing an answer that no frame has drawn yet

    def awaiting_answer(self) -> bool:
        """An operator waits: a command sent and not answered, or an emergency stop not yet seen."""
        return bool(self._pending) or self._after_answer is not None

    def answer_due(self) -> bool:
        """A command went out less than ANSWER_WAIT ago, or an emergency stop waits for its state change."""
        now = time.perf_counter()
        return self._after_answer is not None or any(
            sent is not None and now - sent < ANSWER_WAIT for sent, _ in self._pending.values())

    def _hold_for_answer(self, batch: Batch) -> None:
        """An answer is due within milliseconds: the panels these events changed (a table rebuilt after a
        save's CheckpointSaved) would be drawn first and delay it, so they wait for its frame (at most
        ANSWER_WAIT). So does the header: a frame of its own now would take the frame slot (Textual draws at
        most 60 a second) and the answer arriving a moment later would wait for the next one."""
        self._hold(batch)
        self.set_timer(ANSWER_WAIT, self.show_held_changes)

    def after_next_answer(self, callback) -> None:
        """Run `callback` after the frame that shows the engine's next state change or reply (or FRAME_WAIT
        after the next frame, when no answer comes): a notice of our own never delays the engine's answer."""
        if self._after_answer is None:
            pending = self._after_answer = []
            self.set_timer(4 * FRAME_WAIT, lambda: self._after_answer is pending and self._answer_drawn())
        self._after_answer.append(callback)

    def _answer_drawn(self) -> None:
        callbacks, self._after_answer = self._after_answer or [], None
        for callback in callbacks:
            self.after_next_frame(callback)

    def after_next_frame(self, callback) -> None:
        """Run `callback` once the next frame has been written to the terminal (or FRAME_WAIT from now):
        work that would delay the frame now being prepared, an answer's, comes after it."""
        if self._after_frame is None:
            pending = self._after_frame = []
            self.set_timer(FRAME_WAIT, lambda: self._after_frame is pending and self._run_after_frame())
        self._after_frame.append(callback)

    def expect_painted(self, widget) -> None:
        """`widget` (a PaintNotice) now shows an answer: work waiting for the next frame waits for a frame
        that draws it (a frame already due may go out without it), or FRAME_WAIT."""
        if not widget.is_on_screen:
            return
        self._unpainted |= {widget}

        def painted() -> None:
            self._unpainted -= {widget}

        widget.when_painted(painted)

    def post_display_hook(self) -> None:
        """Textual calls this after each frame it writes (and after one it skipped inside a batch update)."""
        if self._after_frame and not self._batch_count and not self._unpainted:
            self.call_later(self._run_after_frame)

    def _run_after_frame(self) -> None:
        self._unpainted = frozenset()
        callbacks, self._after_frame = self._after_frame or [], None
        for callback in callbacks:
            callback()

    def _show_answer_first(self, batch: Batch) -> None:
        """A state change or a command's answer goes out in a frame of its own (the header, the save line:
        one row each); the panels the same events changed (tables, gauges, the stream) follow in the next."""
        self._show_header()
        self.expect_painted(self.main.header)
        batch.changed.discard("header")
        self._hold(batch)
        self.after_next_frame(self.show_held_changes)
        self._answer_drawn()

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
            main.show_checkpoints(self.state.checkpoints, self.state.disk_usage)
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

