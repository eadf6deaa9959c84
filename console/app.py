"""RedlineApp: the operator console on an event source (the live engine or a replay).

Events are pulled on an interval and applied in one batch update; the UI
never waits on the engine. Commands go out through `source.submit`, and the
engine's CommandDone answers come back as `EngineAnswered` messages; its
comparisons reach the change bars that asked for them as `ComparisonAnswered`.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterable

from textual import work
from textual.app import App, SystemCommand
from textual.binding import BindingsMap
from textual.events import Key, Resize
from textual.message import Message
from textual.screen import ModalScreen, Screen

from console import latency_trace
from console.attached_console import EXIT_NO_FINAL_CHECKPOINT, EXIT_OK, AttachedConsole
from console.bindings import BINDINGS, MUTATING_ACTIONS, PALETTE_ACTIONS
from console.console_state import Batch, ConsoleState
from console.event_source import EventSource, attachment, describe, is_readonly
from console.gc_pacing import GcPacing
from console.main_updates import MainUpdates
from console.screens.compare_view import CompareView
from console.screens.confirm import quit_question, restore_question
from console.screens.edits_screen import EditsChanged, EditsScreen, RevertPlanArrived
from console.screens.help_screen import HelpScreen
from console.screens.main_screen import MainScreen
from console.screens.policy_screen import PolicyScreen
from console.terminal_watch import EXIT_TERMINAL_LOST, TerminalWatch, terminal_fds
from console.text import visible
from console.themes import SEVERITY_VARIABLES, default_theme_name, load_themes
from console.widgets.change_bars import ChangeBars, ComparisonAnswered
from console.widgets.save_prompt import SavePrompt
from engine import commands as cmd
from engine.events import SEVERITIES, CommandDone, ComparisonReady, EngineState

GC_PACING_AFTER = 1.0  # seconds after the first screen before the collector is paced (console.gc_pacing)
PUMP_INTERVAL = 0.1  # seconds between event drains (10 Hz) when the source cannot wake the UI
MAX_EVENTS_PER_PUMP = 5000

EXIT_ERROR = 1
EXIT_TERMINATED = 143  # 128 + SIGTERM


class EngineAnswered(Message):
    """The engine answered a command this console sent."""

    def __init__(self, done: CommandDone, sent_at: float | None) -> None:
        super().__init__()
        self.done = done
        self.sent_at = sent_at  # time.perf_counter() when the command was submitted


class RedlineApp(AttachedConsole, MainUpdates, App[int], inherit_bindings=False):
    TITLE = "Redline"
    CSS_PATH = "redline.tcss"
    BINDINGS = BINDINGS
    ENABLE_COMMAND_PALETTE = True

    def __init__(
        self,
        source: EventSource,
        *,
        theme: str | None = None,
        keymap: dict[str, str] | None = None,
        notes: Iterable[str] = (),
        clock: Callable[[], float] | None = None,
        watch_terminal: bool = True,
    ) -> None:
        """`notes`: problems found before start (e.g. in the keymap file), shown as notifications.
        `clock`: wall time for the uptime; a replay's own clock when it has one (frozen in tests)."""
        super().__init__()
        self.source = source
        self.readonly = is_readonly(source)
        self.state = ConsoleState()
        self.main = MainScreen(self.state)
        self.keymap = dict(keymap or {})
        self.notes = list(notes)
        self.clock = clock or getattr(source, "now", None) or time.time
        self.requested_theme = theme
        self.watch_terminal = watch_terminal
        self.exit_reason = ""
        self.shutdown_result = None  # what the engine's shutdown did with the final checkpoint (None: a replay)
        self._pending: dict[int, tuple[float, Callable[[CommandDone], None] | None]] = {}
        self._shutting_down = False
        self._attachment = ""  # the role and console count the header shows
        self._held: Batch | None = None  # main-screen changes held while a dialog covers it, or after an answer
        self._role = getattr(source, "role", None)  # the footer offers take-control only to an observer
        self.terminal_watch: TerminalWatch | None = None  # stopped by whoever ran the app, after run()
        self.gc_pacing = GcPacing()  # started on a real terminal only: tests run many apps in one process

    # --- start-up -------------------------------------------------------

    def get_default_screen(self) -> Screen:
        return self.main

    def get_theme_variable_defaults(self) -> dict[str, str]:
        return dict(SEVERITY_VARIABLES)

    def on_mount(self) -> None:
        for theme in load_themes():
            self.register_theme(theme)
        self.theme = self.requested_theme or default_theme_name()
        if self.keymap:
            self.set_keymap(self.keymap)
        self.source.start()
        for note in self.notes:
            self.notify(visible(note), title="Keymap", severity="error", timeout=15, markup=False)
        if not self.is_headless and self.watch_terminal:
            self._watch_terminal()
        self._pin_console_size(self.size.width, self.size.height)

    def on_resize(self, event: Resize) -> None:
        self._pin_console_size(event.size.width, event.size.height)  # runs before App's handler sets self.size

    def _pin_console_size(self, width: int, height: int) -> None:
        """Give rich the terminal's size: unset, rich asks the OS (up to three ioctls) each time a cell
        is measured, six thousand times for a table of a thousand checkpoints on attach."""
        self.console.size = (width, height)

    def on_ready(self) -> None:
        """The first frame is up: start pulling events."""
        self.theme_changed_signal.subscribe(self, self._theme_changed)
        latency_trace.install(self)
        self.set_interval(PUMP_INTERVAL, self.pump)
        set_wakeup = getattr(self.source, "set_wakeup", None)
        if set_wakeup is not None:
            set_wakeup(self.wake)
        self.set_interval(1.0, self._tick)
        if not self.is_headless:
            self.set_timer(GC_PACING_AFTER, self.gc_pacing.start)  # the snapshot applied and drawn first
        self._show_header()
        self.pump()

    def _watch_terminal(self) -> None:
        """Stop safely when the terminal goes away: SIGHUP, SIGTERM, or a hung-up tty."""
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGHUP, self.terminal_lost, "SIGHUP")
        loop.add_signal_handler(signal.SIGTERM, self.stop_and_exit, EXIT_TERMINATED, "SIGTERM")
        self.terminal_watch = TerminalWatch(
            terminal_fds(),
            on_lost=lambda: loop.call_soon_threadsafe(self.terminal_lost, "hang-up"),
            last_resort=lambda: self.source.shutdown(timeout=600),
        )
        self.terminal_watch.start()

    def on_unmount(self) -> None:
        self.gc_pacing.stop()
        if not self.is_headless and self.watch_terminal:
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGHUP, signal.SIGTERM):
                loop.remove_signal_handler(sig)
        if not self._shutting_down and self.source.is_alive():
            self.shutdown_result = self.source.shutdown()  # the app ended another way (an error): never leave the engine running

    # --- events in -------------------------------------------------------

    def pump(self) -> None:
        """Drain what the engine has published and show it, in one batch update."""
        if not self.main.is_attached:  # the app is closing; its widgets are going away
            return
        self._last_pump = time.monotonic()
        events = self.source.drain_events(max_events=MAX_EVENTS_PER_PUMP)
        if attachment(self.source) != self._attachment:  # a console attached or left, or the role changed
            self._show_header()
        if not events:
            return
        batch = self.state.apply_all(events)
        with self.batch_update():
            self._show(batch)

    def _show(self, batch: Batch) -> None:
        if isinstance(self.screen, ModalScreen):  # a dialog is open: the dimmed screen behind it waits
            self._hold(batch)
        elif batch.answers:
            self._show_answer_first(batch)
        elif self._held is not None:  # panels already waiting (behind an answer's frame): keep the order
            self._hold(batch)
        elif self.answer_due():
            self._hold_for_answer(batch)
        else:
            self._show_main(batch)
        if "edits" in batch.changed or batch.plans:
            for screen in self.screen_stack:
                if isinstance(screen, EditsScreen):
                    screen.post_message(EditsChanged())
                    for plan in batch.plans:
                        screen.post_message(RevertPlanArrived(plan))
        for comparison in batch.comparisons:
            self._answer_comparison((comparison.checkpoint_a, comparison.checkpoint_b), comparison)
        for done in batch.done:
            self._answered(done)

    def _show_header(self) -> None:
        self._attachment = attachment(self.source)
        if getattr(self.source, "role", None) != self._role:
            self._role = getattr(self.source, "role", None)
            self.refresh_bindings()
        self.main.header.show(self.state, self.clock(), source_label=describe(self.source), readonly=self.readonly,
                              attachment=self._attachment)

    def _tick(self) -> None:
        """Once a second: the uptime clock (and whether an engine asked to stop went away unanswered)."""
        if self.state.engine is not None and self.main.is_attached:
            self._show_header()
        self.check_engine_gone()
        self.gc_pacing.tick(awaiting=self.awaiting_answer())

    def _answer_comparison(self, pair: tuple[str, str], comparison: ComparisonReady | None, refused: str = "") -> None:
        """Post the answer to every ChangeBars on the open screens; each keeps the one for its own pair."""
        for screen in self.screen_stack:
            for bars in screen.query(ChangeBars):
                bars.post_message(ComparisonAnswered(pair, comparison, refused))

    def _answered(self, done: CommandDone) -> None:
        sent_at, on_done = self._pending.pop(done.command_id, (None, None))
        if on_done is not None:
            on_done(done)
        elif sent_at is not None and not done.ok:
            self.notify(visible(f"{done.command} refused: {done.message}"), severity="error", markup=False)
        self.post_message(EngineAnswered(done, sent_at))

    # --- commands out ----------------------------------------------------

    def send(self, command: cmd.Command, on_done: Callable[[CommandDone], None] | None = None) -> int | None:
        """Submit a command; refused here (with a notification) when read-only and it mutates."""
        if self.readonly and command.mutates:
            self._refuse(command.kind)
            return None
        try:
            command_id = self.source.submit(command)
        except Exception as exc:  # the engine is gone or refuses at once
            self.notify(visible(f"{command.kind} failed: {exc}"), severity="error", markup=False)
            return None
        self._pending[command_id] = (time.perf_counter(), on_done)
        return command_id

    def on_change_bars_wanted(self, message: ChangeBars.Wanted) -> None:
        """Ask the engine to compare the pair; a known answer is shown at once."""
        pair = message.pair
        known = self.state.comparisons.get(pair)
        if known is not None:
            self._answer_comparison(pair, known)
            if pair[1] != "current":
                return  # two saved checkpoints never change: the known answer stands

        def refused(done: CommandDone) -> None:
            if not done.ok:
                self._answer_comparison(pair, None, done.message or "refused")

        self.send(cmd.Compare(checkpoint_a=pair[0], checkpoint_b=pair[1]), refused)

    def _refuse(self, action: str) -> None:
        self.notify(
            f"{action.replace('_', ' ')} refused: this console is read-only ({describe(self.source)}).",
            title="Read-only",
            severity="warning",
            markup=False,
        )

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in MUTATING_ACTIONS and self.readonly:
            return False
        if action == "panel":
            return self.main.compact
        if action == "take_control":
            return (not self.readonly and hasattr(self.source, "take_control")
                    and getattr(self.source, "role", None) != "controller")
        return True

    async def on_event(self, event) -> None:
        if isinstance(event, Key):
            self.gc_pacing.key_pressed()  # no full collection while keys come
        await super().on_event(event)

    def on_key(self, event: Key) -> None:
        """Read-only: a hidden mutating key still gets an answer instead of silence."""
        if not self.readonly:
            return
        bindings = BindingsMap(BINDINGS)
        bindings.apply_keymap(self._keymap)  # Textual's normalised copy of self.keymap
        for binding in bindings.key_to_bindings.get(event.key, ()):
            if binding.action in MUTATING_ACTIONS:
                event.stop()
                self._refuse(binding.action)
                return

    # --- actions ---------------------------------------------------------

    def action_emergency_stop(self) -> None:
        self.source.emergency_stop("operator (ctrl+x)")
        self.after_next_answer(lambda: self.notify("EMERGENCY STOP: halting the experiment and rolling back.",
                                                  severity="error", timeout=6))  # the engine's answer draws first

    def action_save(self) -> None:
        if self.screen is self.main:
            self.main.open_save_prompt()
        else:
            self.notify("Save from the main screen: close this view first (Esc).", severity="warning")

    def on_save_prompt_chosen(self, message: SavePrompt.Chosen) -> None:
        """The save goes out first; the line says so while the engine works."""
        prompt, purpose = self.main.save_prompt, message.purpose
        if purpose is None:
            prompt.close()
        elif self.send(cmd.Save(purpose=purpose), lambda done: self._saved(done, purpose)) is None:
            prompt.close()
        else:
            prompt.await_answer(visible(f"saving a checkpoint ({purpose})…"))

    def _saved(self, done: CommandDone, purpose: str = "") -> None:
        """The answer shows in the save line (one row, no relayout); a failure, or an answer that comes while
        the line asks for another purpose, is a notification."""
        prompt = self.main.save_prompt
        text = visible(f"saved {done.result or 'checkpoint'}" + (f" · {purpose}" if purpose else ""))
        if not done.ok:
            prompt.close()
            self.notify(visible(f"save failed: {done.message}"), title="Checkpoint", severity="error", markup=False)
        elif prompt.is_open or self.screen is not self.main:
            self.notify(text, title="Checkpoint", markup=False)
        else:
            prompt.show_status(text)
            self.expect_painted(prompt.label)

    def _selected(self) -> str | None:
        selected = self.main.checkpoints.selected_id
        if selected is None:
            self.notify("No checkpoint selected: pick one in the Checkpoints panel.", severity="warning")
        return selected

    def action_restore(self) -> None:
        selected = self._selected()
        info = self.state.checkpoint(selected) if selected else None
        if info is None:
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self.send(cmd.Restore(checkpoint_id=info.id), self._restored)

        self.push_screen(restore_question(info), answered)

    def _restored(self, done: CommandDone) -> None:
        if done.ok:
            self.notify(visible(f"restored {done.result or done.message}"), title="Restore", markup=False)
        else:
            self.notify(visible(f"restore failed: {done.message}"), title="Restore", severity="error", markup=False)

    def action_pause(self) -> None:
        if self.state.engine_state is EngineState.PAUSED:
            self.send(cmd.Resume())
        elif self.state.engine_state is EngineState.RUNNING:
            self.send(cmd.Pause())
        else:
            self.notify("No experiment is running.", severity="warning")

    def action_compare(self) -> None:
        baseline = self.state.baseline()
        if baseline is None:
            self.notify("No baseline checkpoint yet.", severity="warning")
            return
        selected = self._selected()
        if selected is not None:
            self.push_screen(CompareView(baseline.id, selected))

    def action_filter(self) -> None:
        if self.main.compact:
            self.main.show_panel("alerts")
        self.main.alerts.open_filter()

    def action_clear_filters(self) -> None:
        stream = self.main.alerts
        stream.levels = set(SEVERITIES)
        stream.text_filter = ""
        stream.show_all()

    def action_toggle_severity(self, severity: str) -> None:
        stream = self.main.alerts
        shown = stream.toggle_level(severity)
        stream.show_all()
        self.notify(f"{severity} entries {'shown' if shown else 'hidden'}", timeout=2)

    def action_panel(self, step: int) -> None:
        self.main.cycle_panel(step)

    def action_edits(self) -> None:
        if not isinstance(self.screen, EditsScreen):
            self.push_screen(EditsScreen())

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.keymap))

    def action_policy(self) -> None:
        if not isinstance(self.screen, PolicyScreen):
            self.push_screen(PolicyScreen(self.state.policy))

    async def action_quit(self) -> None:
        if self._shutting_down:
            self.notify("Already stopping the engine safely…")
            return
        if getattr(self.source, "detaches", False):  # attached over the socket: stop the engine, or detach
            self.ask_stop_or_detach()
            return
        if self.state.experiment_active and not self.readonly:

            def answered(yes: bool | None) -> None:
                if yes:
                    self.stop_and_exit(EXIT_OK, "operator quit")

            self.push_screen(quit_question(), answered)
        else:
            self.stop_and_exit(EXIT_OK, "operator quit")

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        for action, title, help_text in PALETTE_ACTIONS:
            if self.check_action(action, ()) is False:
                continue
            yield SystemCommand(title, help_text, lambda a=action: self.run_action(a))
        for name in sorted(self.available_themes):
            if name.startswith("redline-"):
                yield SystemCommand(f"Theme: {name}", f"Switch to the {name} theme", lambda n=name: setattr(self, "theme", n))
        yield SystemCommand("Theme…", "Pick any theme, Textual's included", self.action_change_theme)
        yield SystemCommand("Keys panel", "Show the keys of the focused panel", self.action_show_help_panel)

    def _theme_changed(self, _theme) -> None:
        """Colours written into the stream and table are re-drawn under the new theme."""
        self.main.alerts.show_all()
        self.main.checkpoints.redraw()
        self.main.drift.refresh()
        if self.state.health is not None:
            self.main.gauges.show(self.state)
            self._show_header()

    # --- leaving ---------------------------------------------------------

    def terminal_lost(self, why: str = "terminal gone") -> None:
        self.stop_and_exit(EXIT_TERMINAL_LOST, f"terminal lost ({why})")

    def stop_and_exit(self, return_code: int = EXIT_OK, reason: str = "") -> None:
        """Shut the engine down safely off the UI thread, keep showing its events, then exit."""
        if self._shutting_down:
            return
        self._shutting_down = True
        self.exit_reason = reason
        detaching = getattr(self.source, "detaches", False)
        self.notify("Detaching; the engine keeps running…" if detaching else "Stopping the engine safely…", timeout=60)
        self._shutdown_engine(return_code)

    @work(thread=True, exclusive=True, group="shutdown", exit_on_error=False)
    def _shutdown_engine(self, return_code: int) -> None:
        error: BaseException | None = None
        try:
            self.shutdown_result = self.source.shutdown()
        except Exception as exc:
            error = exc
        try:
            self.call_from_thread(self._finish, return_code, error)
        except RuntimeError:  # the app is already gone
            pass

    def _finish(self, return_code: int, error: BaseException | None) -> None:
        self.pump()
        if error is not None:
            self.exit_reason += f"; engine shutdown failed: {error}"
            return_code = return_code or EXIT_ERROR
        result = self.shutdown_result
        if result is not None and not result.ok:
            return_code = EXIT_NO_FINAL_CHECKPOINT
        self.exit(return_code, return_code=return_code)
