"""Running the experiment in the engine thread: queue it, run it, conclude how it ended.

The experiment's `ctx.step()` and `ctx.wait()` call back into the runner (it
is the context's ExperimentHost): between steps it answers commands, scans
health, measures perplexity, auto-checkpoints and pauses. A CRITICAL finding
unwinds the experiment (ProcedureRequired); the matching emergency procedure
then runs, and the run's outcome is set and published as a RunOutcome event.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass
from typing import Any, Callable

from engine.device_memory import OutOfMemory, forget_exception, is_out_of_memory
from engine.events import EngineState, ExperimentStep, LogLine
from engine.policy import Action, strongest_action
from engine.runtime.emergency import degraded, experiment_failed, operator_stop, out_of_memory, unhealthy_weights
from engine.runtime.loop import BETWEEN_STEPS, PAUSED, WAITING
from engine.runtime.experiment_context import DEMO, ExperimentContext, ExperimentLoadError, load_experiment
from engine.runtime.outcomes import (
    OUTCOME_FAILED,
    OUTCOME_FINISHED,
    OUTCOME_LOAD_ERROR,
    OUTCOME_ROLLED_BACK,
    OUTCOME_STOPPED,
    OUTCOME_UNRECOVERED,
)
from engine.runtime.stop import EMERGENCY, SHUTDOWN, EmergencyStopRequested, install_stop_hooks, remove_hooks
from engine.store.metadata import CheckpointState, checkpoint_metadata

RESTART_DELAY = 3.0  # seconds before an auto-restarting experiment starts again after a rollback
MAX_OOM_RETRIES = 3


class ExperimentFinished(BaseException):
    """Raised out of ctx.step() when the run reached its max_steps option."""


class ProcedureRequired(BaseException):
    """Raised out of ctx.step()/ctx.wait() to unwind the experiment for an emergency procedure."""

    def __init__(self, kind: str, detail: dict):
        super().__init__(kind)
        self.kind = kind  # "unhealthy" | "degraded"
        self.detail = detail


class Ending(enum.Enum):
    """How one call of run(ctx) ended."""

    FINISHED = "finished"  # returned, or max_steps reached
    STOPPED = "stopped"  # emergency stop or shutdown
    PROCEDURE = "procedure"  # unwound for an emergency procedure
    OUT_OF_MEMORY = "out_of_memory"
    ERROR = "error"  # raised


@dataclass(frozen=True)
class RunEnd:
    ending: Ending
    error: BaseException | None = None  # ERROR
    oom: OutOfMemory | None = None  # OUT_OF_MEMORY: its type and message only, so its frames can be freed
    stop_mode: str = ""  # STOPPED: stop.EMERGENCY or stop.SHUTDOWN
    stop_reason: str = ""
    procedure: ProcedureRequired | None = None  # PROCEDURE


@dataclass
class PendingRun:
    """One experiment run that is waiting to start (now or after a restart delay)."""

    name: str
    fn: Callable[[ExperimentContext], Any]
    ctx: ExperimentContext
    start_at: float  # time.monotonic()


class ExperimentRunner:
    """Runs experiments in the engine thread; the ExperimentHost of their contexts."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore
        self.pending: PendingRun | None = None
        self.ctx: ExperimentContext | None = None  # of the run in progress
        self.paused = False

    # -- what the experiment sees (ExperimentHost) ------------------------------------------------
    @property
    def model(self) -> Any:
        return self._core.model

    @property
    def tokenizer(self) -> Any:
        return self._core.tokenizer

    @property
    def checkpoints(self) -> Any:
        return self._core.checkpoints

    @property
    def safety(self) -> Any:
        return self._core.safety

    @property
    def memory(self) -> Any:
        return self._core.memory

    @property
    def inspector(self) -> Any:
        return self._core.inspector

    @property
    def device(self) -> Any:
        return self._core.device

    @property
    def journal(self) -> Any:
        return self._core.edit_journal()

    # -- scheduling ------------------------------------------------------------------------------
    def queue(self, path: str | None, delay: float) -> str | None:
        """Load an experiment and schedule it; None (and a HIGH alert) when the file is unusable."""
        core = self._core
        core.engine.error_experiment = None
        try:
            name, fn = load_experiment(path)
        except ExperimentLoadError as exc:
            core.engine.error_experiment = str(exc)
            core.set_outcome(OUTCOME_LOAD_ERROR, experiment=str(path), detail=str(exc))
            core.alert("HIGH", f"Experiment not started: {exc}", source="experiment")
            return None
        options = dict(core.config.experiment_options)
        if name == DEMO and path in (None, DEMO):
            options.setdefault("auto_restart", True)
        self.pending = PendingRun(name, fn, ExperimentContext(self, name, options), time.monotonic() + delay)
        return name

    def start_at(self) -> float | None:
        return self.pending.start_at if self.pending is not None else None

    def start_due(self) -> bool:
        return self.pending is not None and time.monotonic() >= self.pending.start_at

    def cancel_for_stop(self) -> None:
        """An emergency stop while no experiment runs: cancel a scheduled (re)start, if any."""
        core = self._core
        reason = core.signal.reason or "operator"
        core.signal.clear()
        if self.pending is not None:
            name, self.pending = self.pending.name, None
            if core.engine.outcome is None:
                core.set_outcome(OUTCOME_STOPPED, experiment=name, detail="scheduled start cancelled")
            core.alert("HIGH", f"Emergency stop ({reason}): the scheduled restart of the experiment is cancelled",
                       source="emergency")
        else:
            core.alert("INFO", f"Emergency stop ({reason}) requested while no experiment is running: nothing to stop",
                       source="emergency")

    # -- one run ---------------------------------------------------------------------------------
    def run_pending(self) -> None:
        core, run = self._core, self.pending
        self.pending = None
        core.engine.outcome = None
        self.ctx = run.ctx
        core.experiment_name = run.name
        oom_attempts = 0
        try:
            while True:
                core.set_state(EngineState.RUNNING, f"running {run.name}")
                end = self._call(run)
                self.paused = False
                if end.ending is Ending.OUT_OF_MEMORY:
                    oom_attempts += 1
                    if out_of_memory(core.recovery, run.ctx, end.oom, oom_attempts, MAX_OOM_RETRIES):
                        run.ctx.restarts += 1
                        continue
                    outcome = OUTCOME_FAILED if core.health.is_healthy() else OUTCOME_UNRECOVERED
                    core.set_outcome(outcome, experiment=run.name, steps=run.ctx.steps, detail="out of memory")
                else:
                    self._conclude(run, end)
                break
        finally:
            self.ctx = None
        if core.engine.state != EngineState.ERROR:
            core.set_state(EngineState.IDLE, f"experiment {core.engine.outcome or 'ended'}")

    def _call(self, run: PendingRun) -> RunEnd:
        """Run `run(ctx)` once inside the stop machinery; return how it ended."""
        core = self._core
        hooks = install_stop_hooks(core.model, core.signal)
        try:
            try:
                with core.supervisor.guard():
                    run.fn(run.ctx)
                    if core.journal is not None:
                        core.journal.flush()  # a finished run's edits are on disk
                return RunEnd(Ending.FINISHED)
            finally:
                core.supervisor.leave()
                remove_hooks(hooks)
        except ExperimentFinished:
            return RunEnd(Ending.FINISHED)
        except EmergencyStopRequested as exc:
            core.halted_at = time.perf_counter()
            return RunEnd(Ending.STOPPED, stop_mode=core.signal.mode, stop_reason=core.signal.reason or exc.reason)
        except ProcedureRequired as exc:
            return RunEnd(Ending.PROCEDURE, procedure=exc)
        except BaseException as exc:
            if is_out_of_memory(exc):  # keep no reference to exc: its frames hold what filled the memory
                return RunEnd(Ending.OUT_OF_MEMORY, oom=forget_exception(exc))
            if isinstance(exc, (Exception, SystemExit)):
                return RunEnd(Ending.ERROR, error=exc)
            raise

    def _conclude(self, run: PendingRun, end: RunEnd) -> None:
        """After the experiment unwound: report, recover, decide the outcome and any restart."""
        core = self._core

        def outcome(value: str, detail: str) -> None:
            core.set_outcome(value, experiment=run.name, steps=run.ctx.steps, detail=detail)

        if end.ending is Ending.FINISHED:
            outcome(OUTCOME_FINISHED, "finished")
            core.alert("INFO", f"Experiment {run.name} finished after {run.ctx.steps} steps", source="experiment")
            return
        if end.ending is Ending.STOPPED:
            core.signal.clear()
            if end.stop_mode == SHUTDOWN:
                outcome(OUTCOME_STOPPED, "stopped for shutdown")
                core.alert("INFO", f"Experiment {run.name} stopped for shutdown at step {run.ctx.steps}",
                           source="experiment")
                return
            core.set_state(EngineState.STOPPING, f"emergency stop ({end.stop_reason})")
            recovered = operator_stop(core.recovery, end.stop_reason)
            outcome(OUTCOME_STOPPED if recovered else OUTCOME_UNRECOVERED, f"emergency stop ({end.stop_reason})")
            return
        if end.ending is Ending.PROCEDURE:
            procedure = end.procedure
            core.set_state(EngineState.RECOVERING, procedure.kind)
            if procedure.kind == "degraded":
                recovered = degraded(core.recovery, procedure.detail["perplexity"],
                                               procedure.detail["baseline"])
            else:
                recovered = unhealthy_weights(core.recovery, procedure.detail)
            outcome(OUTCOME_ROLLED_BACK if recovered else OUTCOME_UNRECOVERED, procedure.kind)
            self._after_automatic_rollback(run, recovered)
            return
        core.set_state(EngineState.RECOVERING, "experiment raised")
        recovered = experiment_failed(core.recovery, end.error, run.name)
        outcome(OUTCOME_FAILED if recovered else OUTCOME_UNRECOVERED, f"{type(end.error).__name__}: {end.error}")

    def _after_automatic_rollback(self, run: PendingRun, recovered: bool) -> None:
        core = self._core
        if recovered and run.ctx.options.get("auto_restart"):
            run.ctx.restarts += 1
            self.pending = PendingRun(run.name, run.fn, run.ctx, time.monotonic() + RESTART_DELAY)
            core.alert("INFO", f"Automatic rollback done; {run.name} restarts in {RESTART_DELAY:.0f} s "
                               "(emergency stop cancels the restart)", source="emergency")
        else:
            core.alert("INFO", f"Automatic rollback done; the experiment {run.name} stays stopped. "
                               "Start it again with RunExperiment when ready", source="emergency")

    # -- called from inside run(ctx), in this thread ------------------------------------------------
    def experiment_log(self, ctx: ExperimentContext, text: str) -> None:
        self._core.publish(LogLine(text=text, source=ctx.name))

    def modification_recorded(self, layer_name: str) -> None:
        self._core.coupling.modification_recorded(layer_name)

    def experiment_step(self, ctx: ExperimentContext, name: str, loss: Any = None,
                        metrics: dict | None = None) -> int:
        core = self._core
        core.signal.check()
        ctx.steps += 1
        core.step, core.step_name = ctx.steps, name
        core.publish(ExperimentStep(experiment=ctx.name, step=ctx.steps, name=name))
        core.loop.serve(BETWEEN_STEPS)
        health = core.health.scan()
        core.health.publish(health)
        action, issues = core.detection.judge_step(ctx.steps, health, loss, metrics)
        self._act(action, issues, health)
        every = core.config.evaluate_every
        if every and ctx.steps % every == 0:
            self._evaluate()
        every = core.config.auto_checkpoint_every
        if every and ctx.steps % every == 0 and health["status"] == "OK" and core.health.perplexity_status == "OK":
            self._auto_checkpoint(ctx)
        if self.paused:
            self._pause_here()
        core.signal.check()
        max_steps = ctx.options.get("max_steps")
        if max_steps and ctx.steps >= int(max_steps):
            raise ExperimentFinished()
        return ctx.steps

    def experiment_wait(self, ctx: ExperimentContext, seconds: float) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        self._core.loop.serve(WAITING, until=lambda: time.monotonic() >= deadline, wake_by=lambda: deadline,
                              on_health=self._publish_or_unwind)

    def _publish_or_unwind(self, health: dict) -> None:
        self._core.health.publish(health)
        issues = list(health.get("issues") or ())
        self._act(strongest_action(issues), issues, health)

    def _act(self, action: Action, issues: list[dict], health: dict) -> None:
        """Carry out the policy's strongest action for this step's issues (alerts are already out)."""
        if action is Action.ALERT:
            return
        fired = [i for i in issues if i.get("action") == action.value]
        reason = "; ".join(f"{i['rule']}: {i['message']}" for i in fired[:2]) or action.value
        if action is Action.PAUSE:
            if not self.paused:
                self._core.alert("HIGH", f"Policy action pause at step {self._core.step}: {reason}", source="policy")
            self.paused = True
            return
        if action is Action.STOP:
            self._core.signal.request(f"policy: {reason}", EMERGENCY)
            self._core.signal.check()
        detail = {**health, "issues": fired + [i for i in issues if i not in fired],
                  "message": f"{fired[0]['rule']}: {fired[0]['message']}" if fired else health.get("message")}
        raise ProcedureRequired("unhealthy", detail)

    def _evaluate(self) -> None:
        """Measure perplexity; unwind for the degradation procedure when it is CRITICAL."""
        watch = self._core.health
        perplexity = watch.evaluate()
        if perplexity is None or watch.perplexity_status == "OK":
            return
        action = self._core.detection.policy.action_for("perplexity", watch.perplexity_status)
        if action is Action.ROLLBACK:
            raise ProcedureRequired("degraded", {"perplexity": perplexity, "baseline": watch.baseline_perplexity})
        issue = {"rule": "perplexity", "action": action.value, "severity": watch.perplexity_status,
                 "message": f"perplexity {perplexity:.4g} vs baseline {watch.baseline_perplexity:.4g}"}
        self._act(action, [issue], {"issues": [issue], "message": issue["message"]})

    def _pause_here(self) -> None:
        core = self._core
        core.set_state(EngineState.PAUSED, f"paused at step {core.step}")
        core.loop.serve(PAUSED, until=lambda: not self.paused, on_health=core.health.publish)
        core.set_state(EngineState.RUNNING, f"resumed at step {core.step}")

    def _auto_checkpoint(self, ctx: ExperimentContext) -> None:
        core = self._core
        try:
            core.save_checkpoint(checkpoint_metadata(CheckpointState.AUTO, f"Automatic checkpoint at step {ctx.steps}",
                                                     health="OK", perplexity=core.health.last_perplexity),
                                 hold=True)
            core.sync.prune_automatic()
        except Exception as exc:
            core.alert("HIGH", f"Automatic checkpoint at step {ctx.steps} failed: {type(exc).__name__}: {exc}")
