"""The Engine facade: one object a client (console, headless mode, a script) drives.

`Engine(config).start()` starts a dedicated engine thread that loads the model
and owns it, the checkpoints, the safety monitor, the inspector, the memory and
the experiment. Clients talk to it only through commands (`submit`) and events
(`drain_events`); `emergency_stop` bypasses the queue. Importing this module
imports no torch: torch is imported inside the engine thread (engine.runtime.core).
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.commands import Command, EmergencyStop, Shutdown
from engine.events import CommandDone, EngineState, Event
from engine.requirements_check import check_engine_requirements
from engine.runtime.event_stream import EventStream
from engine.runtime.shutdown_result import SKIPPED, TIMED_OUT, ShutdownResult
from engine.runtime.stop import EMERGENCY, SHUTDOWN, StopSignal


@dataclass
class EngineConfig:
    model: str = "demo"  # "demo", a local HF directory, or a hub id already in the HF cache
    experiment: str | None = "demo"  # "demo", a .py file defining run(ctx), or None (idle)
    run_dir: str | Path | None = None  # None -> engine.paths.default_run_dir(model)
    device: str | None = None  # None -> cuda if available else cpu
    dtype: str | None = None  # None -> bf16 on CUDA, fp32 on CPU
    readonly: bool = False  # observe only: no experiment, mutating commands refused, nothing written
    forensic_checkpoints: bool = True  # keep the pre-rollback state as a tagged checkpoint
    auto_checkpoint_every: int = 10  # steps between automatic checkpoints (0: never)
    health_interval: float = 1.0  # seconds between health scans while idle/paused
    stop_grace: float = 2.0  # seconds before an async exception is raised in a stuck experiment
    evaluate_every: int = 5  # steps between perplexity measurements (0: never)
    experiment_options: dict[str, Any] = field(default_factory=dict)  # ctx.options (max_steps, batch_size, auto_restart...)
    threads: int | None = None  # torch intra-op threads (None: torch's default); a console leaves a core for the UI
    tokenizer: str | Path | None = None  # a tokenizer directory other than the model's (None: the model's own)
    policy_file: str | Path | None = None  # a TOML policy over the defaults and the run dir's policy.toml
    serve: bool = False  # serve <run_dir>/engine.sock so consoles can attach (engine.runtime.server); not when readonly
    on_detach: str = "continue"  # when the last attached console leaves: continue, pause (until one attaches) or stop
    supervised: str | None = None  # the script's name when engine.supervise runs the engine inside that script
    shutdown_timeout: float = 120.0  # seconds Engine.shutdown() waits for the experiment to stop and the final save
    rollback_memory: str | int = "auto"  # host memory for fast rollback: bytes, "16G", "auto" (what fits) or "off"


class Engine:
    """Owns the engine thread; see the module docstring. Thread-safe."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self._events = EventStream()
        self._commands: queue.Queue = queue.Queue()
        self._stop = StopSignal()
        self._ids = itertools.count(1)
        self._thread: threading.Thread | None = None
        self._state = EngineState.STARTING
        self._shutdown_requested = False
        self._shutdown_requested_at = 0.0
        self.shutdown_result: ShutdownResult | None = None  # set by the engine thread as it ends
        self._lock = threading.Lock()
        self.started_at = 0.0
        self.outcome: str | None = None  # how the last experiment run ended (engine.runtime.outcomes); None while one runs
        self.error: str | None = None  # the engine's own failure or the model load error, if any
        self.error_experiment: str | None = None  # why the last experiment file could not be used
        self.core: Any = None  # the engine thread's internals, for tests and diagnostics; never touch from a client
        self.server: Any = None  # the EngineServer while config.serve is on

    @property
    def state(self) -> EngineState:
        return self._state

    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start the engine thread (it loads the model), and its socket server when `config.serve`.

        Starting twice is an error, and so is serving a run directory another
        engine already serves (engine.runtime.server.EngineServerError); so are missing or too old
        torch, transformers, ... (engine.requirements_check.EngineRequirementsError).
        """
        check_engine_requirements()
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this Engine was already started; create a new Engine to start again")
            self.started_at = time.time()
            if self.config.serve and not self.config.readonly:
                from engine.paths import resolve_run_dir
                from engine.runtime.server import EngineServer

                self.server = EngineServer(self, resolve_run_dir(self.config.run_dir, self.config.model))
                self.server.start()
            self._thread = threading.Thread(target=self._thread_main, name="redline-engine", daemon=True)
            self._thread.start()

    def _thread_main(self) -> None:
        from engine.runtime.core import EngineCore

        try:
            EngineCore(self).run()
        finally:
            if self.server is not None:
                self.server.stop()

    def submit(self, command: Command) -> int:
        """Queue a command; returns its id, answered later by CommandDone(command_id=id)."""
        if not isinstance(command, Command):
            raise TypeError(f"submit() takes an engine.commands.Command, got {type(command).__name__}")
        command_id = next(self._ids)
        if self.config.readonly and command.mutates:
            self._refuse(command_id, command, "refused: the engine is read-only (started with --readonly)")
            return command_id
        if isinstance(command, EmergencyStop):
            self.emergency_stop(command.reason)
        if isinstance(command, Shutdown):
            if not self._shutdown_requested:
                self._shutdown_requested_at = time.monotonic()
            self._shutdown_requested = True
            self._stop.request("shutdown", SHUTDOWN)
        if not self.is_alive():
            self._refuse(command_id, command, "refused: the engine is not running")
            return command_id
        self._commands.put((command_id, command))
        return command_id

    def _refuse(self, command_id: int, command: Command, message: str) -> None:
        self._events.publish(CommandDone(command_id=command_id, command=command.kind, ok=False, message=message))

    def emergency_stop(self, reason: str = "operator") -> None:
        """Stop the running experiment now (flag, hooks, async exception), then roll back."""
        self._stop.request(reason or "operator", EMERGENCY)
        self._commands.put(None)  # wake an idle engine thread

    def drain_events(self, max_events: int | None = None) -> list[Event]:
        """Events published since the last drain, oldest first. Never blocks."""
        return self._events.drain(max_events)

    def wait_events(self, timeout: float | None = None) -> bool:
        """Block until an event is waiting (or `timeout`); True if one is."""
        return self._events.wait(timeout)

    def shutdown(self, timeout: float | None = None) -> ShutdownResult:
        """Stop any experiment, save the final checkpoint, end the thread; say what became of the checkpoint.

        Waits at most `timeout` seconds (default: config.shutdown_timeout) for the thread to
        end. Returns WRITTEN (with the id), SKIPPED (none was due), FAILED (the save raised or
        the engine had failed) or TIMED_OUT (the thread is still running: an experiment stuck
        in a call that cannot be interrupted, or a save slower than the timeout). Idempotent.
        """
        thread = self._thread
        if thread is None:
            return ShutdownResult(SKIPPED, reason="the engine was never started")
        if thread.is_alive():
            if not self._shutdown_requested:
                self.submit(Shutdown())
            thread.join(self.config.shutdown_timeout if timeout is None else timeout)
        if thread.is_alive():
            waited = time.monotonic() - self._shutdown_requested_at
            where = f"state {self._state.value}"
            if self.core is not None and self.core.step_name:
                where += f", experiment step {self.core.step} {self.core.step_name!r}"
            return ShutdownResult(TIMED_OUT, reason=(
                f"the engine did not stop within {waited:.0f} s of the shutdown request ({where}; "
                "an experiment stuck in a call that cannot be interrupted, or a very slow save), so "
                "the model's last state is not saved; the newest checkpoint on disk is the last one listed"))
        return self.shutdown_result or ShutdownResult(SKIPPED, reason="the engine thread ended without a shutdown")

    # -- used by the engine thread -------------------------------------------------
    def _set_state(self, state: EngineState) -> None:
        self._state = state
