"""A supervised script's run: the step boundary, the stop hooks, and how the run ends.

The script's thread is the engine thread. `ctx.step()` is the experiment
runner's step (commands, pause, health, detection, perplexity, automatic
checkpoints) inside `_boundary`, which turns the engine's ways of unwinding
an experiment (an emergency stop, a shutdown, a procedure the policy
decided) into the matching emergency procedure, run right there in the
script's thread, and then raises `Stopped` to the script. A forward
pre-hook on every module does the same in the middle of a forward pass. The
`StopSupervisor`'s asynchronous stop covers a loop that calls neither: it
leaves the `with` block, where `finish` recovers and raises `Stopped`.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator

from engine.commands import Shutdown
from engine.events import CheckpointRestored, EngineState, Event
from engine.runtime.emergency import degraded, experiment_failed, operator_stop, unhealthy_weights
from engine.runtime.experiment_context import ExperimentContext, last_frame_in
from engine.runtime.experiment_runner import ProcedureRequired
from engine.runtime.loop import ServeMode
from engine.runtime.outcomes import (
    OUTCOME_FAILED,
    OUTCOME_FINISHED,
    OUTCOME_ROLLED_BACK,
    OUTCOME_STOPPED,
    OUTCOME_UNRECOVERED,
)
from engine.runtime.stop import SHUTDOWN, EmergencyStopRequested
from engine.runtime.supervised_core import SupervisedEngine
from engine.runtime.supervised_stops import EmergencyStopped, RolledBack, ShutdownRequested, Stopped

DRAIN = ServeMode("supervised shutdown", block=False, check_stop=False, sync_checkpoints=False)
UNWINDING = (EmergencyStopRequested, ProcedureRequired)


class SupervisedContext(ExperimentContext):
    """The script's `ctx`: an experiment context whose step() and wait() raise `Stopped`."""

    def __init__(self, host: Any, name: str, run: "SupervisedRun"):
        super().__init__(host, name, {})
        self._run = run

    def step(self, name: str = "", loss: Any = None, **metrics: Any) -> int:
        """The step boundary: commands, pause, health check, detection, automatic checkpoint; may raise Stopped."""
        return self._run.step(str(name), loss, metrics)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds` while answering commands and scanning health; may raise Stopped."""
        self._run.wait(float(seconds))

    @property
    def stopped(self) -> Stopped | None:
        """The Stopped raised to the script, if any: the run is over."""
        return self._run.stopped


class SupervisedRun:
    """One `with supervise(...)` block; every method runs in the script's thread."""

    def __init__(self, engine: SupervisedEngine, name: str):
        self.engine = engine
        self.name = name
        self.core: Any = None
        self.ctx: SupervisedContext | None = None
        self.stopped: Stopped | None = None
        self._owner = 0
        self._hooks: list[Any] = []
        self._in_boundary = False
        self._recovering = False
        self._finished = False  # the final checkpoint was taken (a shutdown, or the end of the block)
        self._restored = ""  # the last checkpoint restored, for Stopped.checkpoint

    # -- entering -------------------------------------------------------------------------------
    def open(self) -> SupervisedContext:
        """Start the engine here (baseline checkpoint, socket), arm the stop hooks; the script's ctx."""
        self._owner = threading.get_ident()
        self.engine.start()
        core = self.core = self.engine.core
        try:
            self.engine._events.add_tap(self._note_restore)
            self.ctx = SupervisedContext(core.runner, self.name, self)
            core.runner.ctx = self.ctx
            core.experiment_name = self.name
            self.engine.outcome = None
            self._hooks = [module.register_forward_pre_hook(self._stop_hook) for module in core.model.modules()]
            core.set_state(EngineState.RUNNING, f"supervising {self.name}")
        except BaseException:
            self._disarm()
            raise
        core.supervisor.enter()
        return self.ctx

    def _note_restore(self, event: Event) -> None:
        if isinstance(event, CheckpointRestored) and event.ok:
            self._restored = event.checkpoint_id

    # -- the boundaries -------------------------------------------------------------------------
    def step(self, name: str, loss: Any, metrics: dict) -> int:
        self._check_usable()
        with self._boundary():
            return self.core.runner.experiment_step(self.ctx, name, loss, metrics)

    def wait(self, seconds: float) -> None:
        self._check_usable()
        with self._boundary():
            self.core.runner.experiment_wait(self.ctx, seconds)

    def _check_usable(self) -> None:
        if self.stopped is not None:
            raise self.stopped
        if not self.engine.is_alive():
            raise RuntimeError("ctx.step() after the `with supervise(...)` block ended")
        if threading.get_ident() != self._owner:
            raise RuntimeError("ctx.step() must be called from the thread that entered `with supervise(...)`")

    def _stop_hook(self, module: Any, args: Any) -> None:
        signal = self.core.signal
        if not signal.requested or self._recovering:
            return
        if self._in_boundary or threading.get_ident() != self._owner:
            raise EmergencyStopRequested(signal.reason or "operator")
        with self._boundary():
            signal.check()

    @contextlib.contextmanager
    def _boundary(self) -> Iterator[None]:
        self._in_boundary = True
        try:
            yield
        except UNWINDING as exc:
            raise self._recover(exc) from None
        finally:
            self._in_boundary = False

    # -- ending ---------------------------------------------------------------------------------
    def _recover(self, exc: BaseException) -> Stopped:
        """Carry out what unwound the script (rollback, emergency stop, shutdown); the Stopped to raise."""
        core = self.core
        core.supervisor.leave()
        self._recovering = True
        self._restored = ""
        try:
            stopped = self._procedure(exc)
        finally:
            self._recovering = False
        self.stopped = stopped
        if not self._finished:
            core.set_state(EngineState.IDLE, f"{self.name} stopped: {stopped.reason}")
        return stopped

    def _procedure(self, exc: BaseException) -> Stopped:
        core = self.core

        def outcome(value: str, detail: str) -> None:
            core.set_outcome(value, experiment=self.name, steps=self.ctx.steps, detail=detail)

        if isinstance(exc, ProcedureRequired):
            core.set_state(EngineState.RECOVERING, exc.kind)
            if exc.kind == "degraded":
                recovered = degraded(core.recovery, exc.detail["perplexity"], exc.detail["baseline"])
                reason = f"perplexity degraded to {exc.detail['perplexity']:.4g} (baseline {exc.detail['baseline']:.4g})"
            else:
                recovered = unhealthy_weights(core.recovery, exc.detail)
                reason = str(exc.detail.get("message") or "unhealthy weights")
            outcome(OUTCOME_ROLLED_BACK if recovered else OUTCOME_UNRECOVERED, exc.kind)
            return RolledBack(reason, self._restored if recovered else "", recovered=recovered)
        mode, reason = core.signal.mode, core.signal.reason or getattr(exc, "reason", "") or "operator"
        core.signal.clear()
        core.halted_at = time.perf_counter()
        if mode == SHUTDOWN:
            outcome(OUTCOME_STOPPED, "stopped for shutdown")
            core.alert("INFO", f"{self.name} stopped for shutdown at step {self.ctx.steps}", source="experiment")
            self.final_checkpoint()
            return ShutdownRequested(reason, core.final_checkpoint, recovered=bool(core.final_checkpoint))
        core.set_state(EngineState.STOPPING, f"emergency stop ({reason})")
        recovered = operator_stop(core.recovery, reason)
        outcome(OUTCOME_STOPPED if recovered else OUTCOME_UNRECOVERED, f"emergency stop ({reason})")
        return EmergencyStopped(reason, self._restored if recovered else "", recovered=recovered)

    def final_checkpoint(self) -> None:
        """The engine's safe shutdown: answer what is queued (accepting a Shutdown), save the final checkpoint."""
        if self._finished:
            return
        self._finished = True
        core = self.core
        core.loop.serve(DRAIN)
        command = core.shutdown_command[1] if core.shutdown_command is not None else Shutdown()
        core.finish_for_shutdown(command)

    def finish(self, exc: BaseException | None) -> Stopped | None:
        """Leaving the block: record how it ended, recover if the script was unwound, final checkpoint, close.

        Returns a Stopped to raise instead of `exc` (an asynchronous stop that landed in the script).
        """
        core = self.core
        instead = None
        try:
            core.supervisor.leave()
            if isinstance(exc, UNWINDING):
                instead = self._recover(exc)
            elif exc is None or isinstance(exc, Stopped):
                if self.stopped is None:
                    core.set_outcome(OUTCOME_FINISHED, experiment=self.name, steps=self.ctx.steps, detail="finished")
                    core.alert("INFO", f"Supervised script {self.name} finished after {self.ctx.steps} steps",
                               source="experiment")
            elif isinstance(exc, Exception):
                core.set_state(EngineState.RECOVERING, "the supervised script raised")
                recovered = experiment_failed(core.recovery, exc, self.name)
                core.set_outcome(OUTCOME_FAILED if recovered else OUTCOME_UNRECOVERED, experiment=self.name,
                                 steps=self.ctx.steps, detail=f"{type(exc).__name__}: {exc}")
            else:
                core.alert("HIGH", f"Supervised script {self.name} ended by {type(exc).__name__} at "
                                   f"{last_frame_in(exc)}; saving the final checkpoint", source="experiment")
                core.set_outcome(OUTCOME_STOPPED, experiment=self.name, steps=self.ctx.steps,
                                 detail=type(exc).__name__)
            self.final_checkpoint()
        finally:
            self._disarm()
        return instead

    def _disarm(self) -> None:
        """Remove the stop hooks and the restore tap, close the engine (the server, the registry entry)."""
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        self.engine._events.remove_tap(self._note_restore)
        self.core.runner.ctx = None
        self.engine.close()
