"""The engine thread: the only thread that touches the model.

`EngineCore(engine).run()` is the body of the thread `engine.runtime.Engine`
starts. It loads the model, saves the baseline, then serves commands
(engine.runtime.loop), scanning health once per `health_interval`, noticing
checkpoints other processes wrote (checkpoint_sync), and running the
experiment in this same thread (experiment_runner). This module holds the
state they share, set-up and teardown, and publishing. Emergency procedures
(engine.runtime.emergency) see the core only through `RecoveryActions`.
"""

from __future__ import annotations

import logging
import os
import traceback
from pathlib import Path
from typing import Any, Callable

import torch

from engine import placement
from engine.commands import Shutdown
from engine.events import (Alert, CommandDone, EditRecorded, EngineState, EngineStateChanged, Progress,
                           RollbackMemory, RunOutcome)
from engine.fsutil import secure_mkdir
from engine.policy import Severity
from engine.policy_file import PolicyError
from engine.rollback_memory import parse_rollback_memory, plan_rollback_memory
from engine.runtime.checkpoint_sync import CheckpointSync
from engine.runtime.coupling import Coupling
from engine.runtime.detection_watch import DetectionWatch
from engine.runtime.drift import DriftWatch
from engine.runtime.experiment_context import last_frame_in
from engine.runtime.experiment_runner import ExperimentRunner
from engine.runtime.handlers import CommandHandlers
from engine.runtime.health import HealthWatch
from engine.runtime.loop import ERROR, IDLE, CommandLoop
from engine.runtime.outcomes import OUTCOME_MODEL_ERROR, OUTCOME_POLICY_ERROR
from engine.runtime.recovery import RecoveryActions
from engine.runtime.shutdown_result import FAILED, SKIPPED, WRITTEN, ShutdownResult
from engine.runtime.stop import EMERGENCY, EmergencyStopRequested, StopSupervisor
from engine.store.metadata import CheckpointState, checkpoint_metadata

log = logging.getLogger(__name__)


class EngineCore:
    """State and behaviour of the engine thread; see the module docstring.

    `engine` is the `engine.runtime.Engine` facade that started the thread.
    """

    def __init__(self, engine: Any):
        self.engine = engine
        self.config = engine.config
        self.events = engine._events
        self.commands = engine._commands
        self.signal = engine._stop
        self.model: Any = None
        self.tokenizer: Any = None
        self.manager: Any = None
        self.checkpoints: Any = None
        self.safety: Any = None
        self.memory: Any = None
        self.journal: Any = None  # the EditJournal, opened on first use (edit_journal)
        self.inspector: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self.run_dir: Path | None = None
        self.run_dir_identity: int | None = None  # inode of the run dir, to notice its deletion
        self.experiment_name: str | None = None
        self.step = 0
        self.step_name = ""
        self.exit_requested = False
        self.shutdown_command: tuple[int, Shutdown] | None = None
        self.final_checkpoint = ""
        self.supervisor: StopSupervisor | None = None
        self.halted_at = 0.0  # perf_counter() when the last stopped experiment had unwound
        self.health = HealthWatch(self)
        self.detection = DetectionWatch(self)
        self.drift = DriftWatch(self)
        self.sync = CheckpointSync(self)
        self.coupling = Coupling(self)
        self.runner = ExperimentRunner(self)
        self.handlers = CommandHandlers(self)
        self.loop = CommandLoop(self)
        self.recovery = RecoveryActions(self)

    @property
    def pending(self) -> Any:
        """The experiment run scheduled to start, if any."""
        return self.runner.pending

    # -- publishing ------------------------------------------------------------------
    def publish(self, event: Any) -> None:
        self.events.publish(event)

    def alert(self, severity: str, message: str, source: str = "engine") -> None:
        """An engine alert: into the SafetyMonitor's history and journal, whose listener publishes it."""
        if self.safety is not None:
            try:
                self.safety.raise_alert(severity, message, source=source)
                return
            except Exception as exc:
                log.warning("could not record an alert in the safety monitor: %s", exc)
        self.publish(Alert(severity=severity, message=message, source=source))
        log.log(Severity.parse(severity).log_level, "%s: %s", severity, message)

    def forward_alert(self, alert: dict) -> None:
        """SafetyMonitor listener: every alert it raises becomes an Alert event."""
        self.publish(Alert(severity=Severity.parse(alert.get("severity", "INFO")).name,
                           message=str(alert.get("message", "")), source=str(alert.get("source") or "safety"),
                           rule=str(alert.get("rule") or ""), action=str(alert.get("action") or "")))

    def set_state(self, state: EngineState, detail: str = "") -> None:
        self.engine._set_state(state)
        self.publish(
            EngineStateChanged(
                state=state,
                detail=detail,
                model=self.config.model,
                device=placement.where(self.model, self.device),
                dtype=str(self.dtype).replace("torch.", "") if self.dtype is not None else "",
                experiment=self.experiment_name,
                step=self.step,
                step_name=self.step_name,
                started_at=self.engine.started_at,
            )
        )

    def set_outcome(self, outcome: str, *, experiment: str | None = None, steps: int = 0, detail: str = "") -> None:
        """How the last run ended (engine.runtime.outcomes): on the facade, and as a RunOutcome event."""
        self.engine.outcome = outcome
        self.publish(RunOutcome(outcome=outcome, experiment=experiment, steps=steps, detail=detail))

    def progress_callback(self, task: str) -> Callable[[float, float | None, str], None]:
        def report(done: float, total: float | None = None, message: str = "") -> None:
            finished = total is not None and done >= total
            self.publish(Progress(task=task, done=float(done), total=total, message=str(message), finished=finished))

        return report

    # -- checkpoints (published through checkpoint_sync) ---------------------------------
    def save_checkpoint(self, metadata: dict, *, hold: bool) -> str:
        return self.sync.save(metadata, hold=hold)

    def restore(self, checkpoint_id: str) -> bool:
        return self.sync.restore(checkpoint_id)

    # -- thread body -----------------------------------------------------------------
    def run(self) -> None:
        self.engine.core = self
        self.supervisor = StopSupervisor(self.signal, self.config.stop_grace)
        try:
            self.set_state(EngineState.STARTING)
            if self.config.threads:
                torch.set_num_threads(max(1, int(self.config.threads)))
            if self.setup():
                if self.config.experiment and not self.config.readonly:
                    self.runner.queue(self.config.experiment, delay=0.0)
                self.serve_idle()
            else:
                self.serve_error_state()
        except BaseException as exc:  # the engine's own failure: never a silently dead thread
            self.fail(exc)
            try:
                self.serve_error_state()
            except BaseException as again:
                log.exception("engine error loop failed: %s", again)
        finally:
            self.teardown()

    def serve_idle(self) -> None:
        """Between experiments: serve commands, start due runs, act on a stop; then finish a shutdown."""
        runner = self.runner

        def interrupted() -> bool:
            return runner.start_due() or (self.signal.requested and self.signal.mode == EMERGENCY)

        def on_health(result: dict) -> None:
            self.sync.poll_if_unwatched()
            if not self.health.measure_if_unknown():  # publishes the scan with the new perplexity when it measures
                self.health.publish(result)
            self.sync.check_disk_copies()

        while not self.exit_requested:
            try:
                if runner.start_due():
                    runner.run_pending()
                    continue
                if self.signal.requested and self.signal.mode == EMERGENCY:
                    runner.cancel_for_stop()
                self.loop.serve(IDLE, until=interrupted, wake_by=runner.start_at, on_health=on_health)
            except EmergencyStopRequested:
                continue  # a late asynchronous stop that landed outside the experiment: nothing to unwind
        if self.shutdown_command is not None:
            self.finish_for_shutdown(self.shutdown_command[1])

    def serve_error_state(self) -> None:
        """After a failure: answer every command (refusing all but Shutdown) until shut down."""
        self.loop.serve(ERROR)

    def fail(self, exc: BaseException) -> None:
        where = last_frame_in(exc)
        message = f"Engine failure: {type(exc).__name__}: {exc} at {where}. The model is no longer being managed; shut down and restart."
        self.engine.error = message
        log.error("engine failure\n%s", "".join(traceback.format_exception(exc)))
        self.alert("CRITICAL", message)
        self.set_state(EngineState.ERROR, message)

    def finish_for_shutdown(self, command: Shutdown) -> None:
        """Shutdown while idle: save the final state (unless read-only or told not to); record what happened."""
        self.runner.pending = None
        if not command.checkpoint:
            self.engine.shutdown_result = ShutdownResult(SKIPPED, reason="the shutdown asked for none")
        elif self.config.readonly or self.checkpoints is None:
            self.engine.shutdown_result = ShutdownResult(SKIPPED, reason="the engine is read-only")
        else:
            try:
                self.final_checkpoint = self.save_checkpoint(
                    checkpoint_metadata(CheckpointState.SHUTDOWN, "Final checkpoint at shutdown",
                                        health=self.health.label()),
                    hold=False,
                )
                self.engine.shutdown_result = ShutdownResult(WRITTEN, checkpoint_id=self.final_checkpoint)
            except Exception as exc:
                why = f"the save failed: {type(exc).__name__}: {exc}"
                self.engine.shutdown_result = ShutdownResult(FAILED, reason=why)
                self.alert("HIGH", f"Final checkpoint at shutdown failed: {type(exc).__name__}: {exc}")
        self.set_state(EngineState.STOPPING, "shutting down")

    def unsaved_reason(self) -> ShutdownResult:
        """The result of a shutdown that never reached finish_for_shutdown (the error state)."""
        if self.shutdown_command is not None and not self.shutdown_command[1].checkpoint:
            return ShutdownResult(SKIPPED, reason="the shutdown asked for none")
        if self.model is None:
            return ShutdownResult(SKIPPED, reason=f"no model was loaded ({self.engine.error or 'none'})")
        if self.config.readonly:
            return ShutdownResult(SKIPPED, reason="the engine is read-only")
        return ShutdownResult(FAILED, reason=f"the engine had failed before the shutdown: {self.engine.error}")

    def teardown(self) -> None:
        for closer in (
            self.sync.stop_watching,
            lambda: self.supervisor and self.supervisor.close(),
            lambda: self.safety and self.safety.detach_activation_monitor(),
            lambda: self.memory and self.memory.close(),
            lambda: self.journal and self.journal.close(),
            self.release_host_memory,
        ):
            try:
                closer()
            except Exception as exc:
                log.warning("engine teardown: %s", exc)
        if self.engine.shutdown_result is None:
            self.engine.shutdown_result = self.unsaved_reason()
        if self.shutdown_command is not None:
            command_id, command = self.shutdown_command
            result = self.engine.shutdown_result
            self.publish(CommandDone(command_id=command_id, command=command.kind, ok=True,
                                     message=f"engine shut down; {result.describe()}", result=self.final_checkpoint))
        self.set_state(EngineState.STOPPED, "engine thread ended")

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> bool:
        """Load the model and build the safety systems; False when the model cannot be loaded."""
        from engine.benchmarks import save_baseline_metrics
        from engine.checkpointing import CheckpointManager
        from engine.introspection import WeightInspector
        from engine.paths import resolve_run_dir
        from engine.safety_monitor import SafetyMonitor

        config = self.config
        readonly = config.readonly
        self.run_dir = resolve_run_dir(config.run_dir, config.model)
        self.set_state(EngineState.LOADING, f"loading {config.model}")
        try:
            parse_rollback_memory(config.rollback_memory)
            self.manager = self.open_model_manager()
            loaded = self.manager.load_model()
        except ValueError as exc:  # a nonsense device, dtype or rollback memory
            self.manager, loaded = None, False
            load_error = str(exc)
        if not loaded:
            message = (self.manager.error if self.manager else load_error) or f"the model {config.model!r} could not be loaded"
            self.engine.error = message
            self.set_outcome(OUTCOME_MODEL_ERROR, detail=message)
            self.alert("CRITICAL", f"Model not loaded: {message}")
            self.set_state(EngineState.ERROR, "model could not be loaded")
            return False
        self.bind_model()
        if not readonly:
            secure_mkdir(self.run_dir)
            self.run_dir_identity = os.stat(self.run_dir).st_ino
        try:
            self.detection.load_policy()
        except PolicyError as exc:
            self.engine.error = str(exc)
            self.set_outcome(OUTCOME_POLICY_ERROR, detail=str(exc))
            self.alert("CRITICAL", f"Policy not usable: {exc}")
            self.set_state(EngineState.ERROR, "policy file unusable")
            return False
        self.safety = SafetyMonitor(run_dir=None if readonly else self.run_dir)
        self.safety.add_alert_listener(self.forward_alert)
        self.detection.attach()
        self.safety.attach_activation_monitor(self.model)
        self.inspector = WeightInspector(self.model, config.model)
        if not readonly:
            self.open_memory()
            self.publish_recent_edits()
        checkpoint_dir = self.run_dir / "checkpoints"
        if not readonly:
            self.checkpoints = CheckpointManager(self.model, checkpoint_dir, memory_budget=self.rollback_budget())
        elif checkpoint_dir.is_dir():
            self.checkpoints = CheckpointManager(self.model, checkpoint_dir, memory_snapshot=False, readonly=True)
        health = self.health.scan()
        perplexity = None
        if self.tokenizer is None:
            self.alert("MEDIUM", f"Perplexity is off: {self.manager.tokenizer_note or 'the model has no tokenizer'} "
                                 "Scans, checkpoints and rollback work as usual.")
        else:
            bench = self.progress_callback("benchmark")
            bench(0, 1, "measuring baseline perplexity")
            self.health.measure_baseline()
            perplexity = self.health.last_perplexity
            bench(1, 1, f"baseline perplexity {perplexity:.3f}")
        if not readonly:
            if self.health.baseline_metrics is not None:
                save_baseline_metrics(self.health.baseline_metrics, self.run_dir / "baseline_metrics.json")
            baseline_id = self.save_checkpoint(
                checkpoint_metadata(CheckpointState.BASELINE, "Baseline at engine start", health=health["status"],
                                    model=config.model, perplexity=perplexity),
                hold=health["status"] == "OK",
            )
            measured = f"perplexity {perplexity:.3f}" if perplexity is not None else "perplexity off"
            self.alert("INFO", f"Baseline checkpoint {baseline_id} saved ({measured})")
        self.detection.record_baseline("" if readonly else baseline_id)
        self.health.publish(health)
        self.sync.publish_list()
        self.coupling.publish()
        self.sync.watch()
        self.set_state(EngineState.IDLE, "ready")
        return True

    def rollback_budget(self) -> int:
        """Decide the fast-rollback copy for this model (--rollback-memory), say so; its byte budget."""
        from engine.store.staging_pool import staging_pool
        from engine.store.tensors import model_groups

        model_bytes = sum(g.tensor.nbytes for g in model_groups(self.model))
        pinned = torch.cuda.is_available() and any(p.is_cuda for p in self.model.parameters())
        plan = plan_rollback_memory(self.config.rollback_memory, model_bytes, pinned=pinned,
                                    staging=staging_pool().limit if pinned else 0)
        self.publish(RollbackMemory(on=plan.on, model_bytes=model_bytes,
                                    budget_bytes=-1 if plan.budget is None else plan.budget, message=plan.describe()))
        return plan.budget if plan.on else 0

    def release_host_memory(self) -> None:
        """At the end: the fast-rollback copy and the staging pool's buffers go back to the OS."""
        from engine.store.staging_pool import staging_pool

        if self.checkpoints is not None:
            self.checkpoints.release_memory_snapshot()
        staging_pool().release()

    def open_model_manager(self) -> Any:
        """The ModelManager that loads the model (and reloads it for recovery); a seam for supervised models."""
        from engine.model_manager import ModelManager

        config = self.config
        return ModelManager(config.model, device=config.device, dtype=config.dtype,
                            tokenizer=config.tokenizer, progress=self.progress_callback("model"))

    def open_memory(self) -> None:
        """Open the run's MemorySystem; a damaged database must not keep the model unguarded."""
        from engine.memory import MemoryStoreError, MemorySystem

        try:
            self.memory = MemorySystem(self.run_dir / "memory")
            self.memory.set_weight_inspector(self.inspector)
            self.coupling.coupled_modifications = len(self.memory.observations.query(category="coupled_modification"))
        except MemoryStoreError as exc:
            if self.memory is not None:
                self.memory.close()
            self.memory = None
            self.alert("HIGH", f"Memory system unavailable, running without it: {exc}")

    def edit_journal(self) -> Any:
        """The run's EditJournal (engine.edits) over the current model, opened on first use."""
        if self.config.readonly or self.run_dir is None:
            raise RuntimeError("the engine is read-only (--readonly): edits cannot be made or journaled")
        if self.journal is not None and self.journal.model is not self.model:
            self.journal.close()  # the model was reloaded: journal the new one
            self.journal = None
        if self.journal is None:
            from engine.edits import EditJournal
            from engine.edits.report import edit_info

            p = self.detection.policy
            on = p.enabled.get("edit_checkpoint", True)
            self.journal = EditJournal(
                self.model, self.run_dir, rules=self.edit_gate_rules, tokenizer=self.tokenizer,
                checkpoint=self.checkpoint_for_edit if self.checkpoints is not None else None,
                checkpoint_every=int(p.param("edit_checkpoint", "every")) if on else 0,
                checkpoint_above=p.param("edit_checkpoint", "above") if on else 0.0)
            self.journal.listeners.append(lambda record: self.publish(EditRecorded(edit=edit_info(record))))
        return self.journal

    def edit_gate_rules(self) -> Any:
        """The edit gate's rules under the run's policy: the baseline rule while the run has baseline statistics."""
        from engine.edits.gate import GateRules

        p, detector = self.detection.policy, self.detection.detector
        baseline = detector.baseline if detector is not None and p.enabled.get("baseline_departure", True) else None
        return GateRules(baseline=baseline, departure_limit=p.param("baseline_departure", "high"))

    def checkpoint_for_edit(self, edit_id: int, reason: str) -> str:
        """The checkpoint the edit_checkpoint policy asked for when edit `edit_id` committed."""
        metadata = checkpoint_metadata(CheckpointState.EDIT, f"after edit {edit_id} ({reason})",
                                       health=self.health.label(), tags=[CheckpointState.EDIT, f"edit-{edit_id}"],
                                       edit_id=edit_id)
        try:
            return self.save_checkpoint(metadata, hold=False)
        except Exception as exc:
            self.alert("HIGH", f"The checkpoint the policy asked for after edit {edit_id} failed: {exc}. "
                               "The edit is committed and revertible; save a checkpoint by hand (s).")
            raise

    def publish_recent_edits(self) -> None:
        """The run directory's recent journal entries (earlier engines' edits), for the Edits screen."""
        from engine.edits.report import recent_edits

        for event in recent_edits(self.run_dir):
            self.publish(event)

    def bind_model(self) -> None:
        """Take the model, tokenizer, device and dtype from the model manager.

        The device is where the model's weights are, not where the manager was asked to put
        them: after a CPU fallback they differ until the manager is told (recovery does so).
        """
        from engine.benchmarks import model_device

        self.model = self.manager.model
        self.tokenizer = self.manager.tokenizer
        self.device = model_device(self.model)
        self.dtype = self.manager.dtype

    def rebind_after_reload(self) -> None:
        """After ModelManager.reload(): point every safety system at the (possibly new) model."""
        from engine.checkpointing import CheckpointManager
        from engine.introspection import WeightInspector

        old = self.model
        self.bind_model()
        if self.model is old:
            return
        self.safety.detach_activation_monitor()
        self.safety.attach_activation_monitor(self.model)
        self.detection.attach()
        self.inspector = WeightInspector(self.model, self.config.model)
        if self.memory is not None:
            self.memory.set_weight_inspector(self.inspector)
        if self.checkpoints is not None:
            self.checkpoints = CheckpointManager(self.model, self.checkpoints.checkpoint_dir,
                                                 memory_budget=self.checkpoints.memory_budget)

    def check_run_dir(self) -> None:
        """Someone deleted the run directory: say so once, recreate it, reopen the memory database."""
        if self.config.readonly or self.run_dir is None:
            return
        try:
            identity = os.stat(self.run_dir).st_ino
        except FileNotFoundError:
            identity = None
        if self.run_dir_identity is None:
            self.run_dir_identity = identity
        if identity is not None and identity == self.run_dir_identity:
            return
        self.alert("HIGH", f"The run directory {self.run_dir} was deleted while the engine ran; recreating it. "
                           "Checkpoints and memory stored there before are gone; new ones are kept.")
        try:
            secure_mkdir(self.run_dir)
            if self.memory is not None:
                from engine.memory import MemorySystem

                self.memory.close()
                self.memory = MemorySystem(self.run_dir / "memory")
                self.memory.set_weight_inspector(self.inspector)
            self.run_dir_identity = os.stat(self.run_dir).st_ino
        except Exception as exc:  # the engine goes on guarding the model without the database
            self.memory = None
            self.alert("HIGH", f"Could not recreate the run directory {self.run_dir}: {type(exc).__name__}: {exc}")
