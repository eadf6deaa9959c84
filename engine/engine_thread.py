"""The engine thread: the only thread that touches the model.

`EngineCore(engine).run()` is the body of the thread `engine.runtime.Engine`
starts. It loads the model, saves the baseline, then loops: answer commands,
scan health once per `health_interval`, notice checkpoints other processes
wrote, and run the experiment in this same thread. `ctx.step()` calls back into
`experiment_step`, where the same upkeep happens between experiment steps.
Emergency procedures live in engine.emergency; stopping in engine.stop.
"""

from __future__ import annotations

import collections
import json
import logging
import os
import queue
import time
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import torch

from engine import emergency, policy
from engine.commands import (
    Command,
    Compare,
    Delete,
    EmergencyStop,
    Pause,
    Restore,
    Resume,
    RunExperiment,
    Save,
    Shutdown,
)
from engine.events import (
    Alert,
    CheckpointDeleted,
    CheckpointInfo,
    CheckpointList,
    CheckpointRestored,
    CheckpointSaved,
    CommandDone,
    ComparisonReady,
    CouplingView,
    EngineState,
    EngineStateChanged,
    ExperimentStep,
    HealthSnapshot,
    LogLine,
    Progress,
    TensorChange,
)
from engine.experiment_context import DEMO, ExperimentContext, ExperimentLoadError, last_frame_in, load_experiment
from engine.fsutil import secure_mkdir
from engine.gauges import health_gauges
from engine.run_dir_watch import RunDirWatcher
from engine.stop import EMERGENCY, SHUTDOWN, EmergencyStopRequested, StopSupervisor, install_stop_hooks, remove_hooks

if TYPE_CHECKING:
    from engine.runtime import Engine

log = logging.getLogger(__name__)

EVAL_TOKENS = 1024  # tokens per in-run perplexity measurement (kept small: it runs every few steps)
EVAL_SEQ_LEN = 128
KEEP_AUTO_CHECKPOINTS = 20  # older automatic checkpoints are pruned; no other kind ever is
RESTART_DELAY = 3.0  # seconds before an auto-restarting experiment starts again after a rollback
MAX_OOM_RETRIES = 3
MAX_DIFFERENCES = 64  # tensors listed in a ComparisonReady


class ExperimentFinished(BaseException):
    """Raised out of ctx.step() when the run reached its max_steps option."""


class ProcedureRequired(BaseException):
    """Raised out of ctx.step()/ctx.wait() to unwind the experiment for an emergency procedure."""

    def __init__(self, kind: str, detail: dict):
        super().__init__(kind)
        self.kind = kind  # "unhealthy" | "degraded"
        self.detail = detail


def _severity_name(value: Any) -> str:
    name = getattr(value, "name", None) or str(value)
    return name.upper().split(".")[-1]


def _is_out_of_memory(exc: BaseException) -> bool:
    return isinstance(exc, torch.cuda.OutOfMemoryError)


class _Run:
    """One experiment run that is waiting to start (now or after a restart delay)."""

    def __init__(self, name: str, fn: Callable, ctx: ExperimentContext, start_at: float):
        self.name, self.fn, self.ctx, self.start_at = name, fn, ctx, start_at


class EngineCore:
    """State and behaviour of the engine thread; see the module docstring."""

    def __init__(self, engine: "Engine"):
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
        self.run_dir_identity: int | None = None  # inode of the run dir, to notice its deletion
        self.inspector: Any = None
        self.device: Any = None
        self.dtype: Any = None
        self.run_dir: Path | None = None
        self.baseline_metrics: dict | None = None
        self.last_health: dict | None = None
        self.last_perplexity: float | None = None
        self.perplexity_status = "OK"  # of the last measurement since the last restore
        self.ctx: ExperimentContext | None = None
        self.experiment_name: str | None = None
        self.pending: _Run | None = None
        self.paused = False
        self.step = 0
        self.step_name = ""
        self.exit_requested = False
        self.shutdown_command: tuple[int, Shutdown] | None = None
        self.final_checkpoint = ""
        self.known_checkpoints: tuple[str, ...] = ()
        self.checkpoints_dirty = False
        self.next_health = 0.0
        self.coupled_modifications = 0
        self.recent_coupled: collections.deque[str] = collections.deque(maxlen=8)
        self.supervisor: StopSupervisor | None = None
        self.halted_at = 0.0  # perf_counter() when the last stopped experiment had unwound
        self.watcher: RunDirWatcher | None = None

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
        log.log(logging.ERROR if severity in ("CRITICAL", "HIGH") else logging.INFO, "%s: %s", severity, message)

    def set_state(self, state: EngineState, detail: str = "") -> None:
        self.engine._set_state(state)
        self.publish(
            EngineStateChanged(
                state=state,
                detail=detail,
                model=self.config.model,
                device=str(self.device) if self.device is not None else "",
                dtype=str(self.dtype).replace("torch.", "") if self.dtype is not None else "",
                experiment=self.experiment_name,
                step=self.step,
                step_name=self.step_name,
                started_at=self.engine.started_at,
            )
        )

    def set_state_recovering(self, detail: str) -> None:
        self.set_state(EngineState.RECOVERING, detail)

    def progress_callback(self, task: str) -> Callable[[float, float | None, str], None]:
        def report(done: float, total: float | None = None, message: str = "") -> None:
            finished = total is not None and done >= total
            self.publish(Progress(task=task, done=float(done), total=total, message=str(message), finished=finished))

        return report

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
                    self.queue_experiment(self.config.experiment, delay=0.0)
                self.main_loop()
            else:
                self.error_loop()
        except BaseException as exc:  # the engine's own failure: never a silently dead thread
            self.fail(exc)
            try:
                self.error_loop()
            except BaseException as again:
                log.exception("engine error loop failed: %s", again)
        finally:
            self.teardown()

    def fail(self, exc: BaseException) -> None:
        where = last_frame_in(exc)
        message = f"Engine failure: {type(exc).__name__}: {exc} at {where}. The model is no longer being managed; shut down and restart."
        self.engine.error = message
        log.error("engine failure\n%s", "".join(traceback.format_exception(exc)))
        self.alert("CRITICAL", message)
        self.set_state(EngineState.ERROR, message)

    def teardown(self) -> None:
        for closer in (
            lambda: self.watcher and self.watcher.stop(),
            lambda: self.supervisor and self.supervisor.close(),
            lambda: self.safety and self.safety.detach_activation_monitor(),
            lambda: self.memory and self.memory.close(),
        ):
            try:
                closer()
            except Exception as exc:
                log.warning("engine teardown: %s", exc)
        if self.shutdown_command is not None:
            command_id, command = self.shutdown_command
            self.publish(CommandDone(command_id=command_id, command=command.kind, ok=True,
                                     message="engine shut down", result=self.final_checkpoint))
        self.set_state(EngineState.STOPPED, "engine thread ended")

    # -- setup -----------------------------------------------------------------------
    def setup(self) -> bool:
        """Load the model and build the safety systems; False when the model cannot be loaded."""
        from engine.benchmarks import run_benchmarks, save_baseline_metrics
        from engine.checkpointing import CheckpointManager
        from engine.introspection import WeightInspector
        from engine.model_manager import ModelManager
        from engine.paths import default_run_dir
        from engine.safety_monitor import SafetyMonitor

        config = self.config
        readonly = config.readonly
        self.run_dir = Path(config.run_dir).expanduser() if config.run_dir else default_run_dir(config.model)
        self.set_state(EngineState.LOADING, f"loading {config.model}")
        try:
            self.manager = ModelManager(config.model, device=config.device, dtype=config.dtype,
                                        progress=self.progress_callback("model"))
            loaded = self.manager.load_model()
        except ValueError as exc:  # a nonsense device or dtype
            self.manager, loaded = None, False
            load_error = str(exc)
        if not loaded:
            message = (self.manager.error if self.manager else load_error) or f"the model {config.model!r} could not be loaded"
            self.engine.error = message
            self.engine.outcome = "model_error"
            self.alert("CRITICAL", f"Model not loaded: {message}")
            self.set_state(EngineState.ERROR, "model could not be loaded")
            return False
        self.bind_model()
        if not readonly:
            secure_mkdir(self.run_dir)
            self.run_dir_identity = os.stat(self.run_dir).st_ino
        self.safety = SafetyMonitor(run_dir=None if readonly else self.run_dir)
        self.safety.add_alert_listener(self.forward_alert)
        self.safety.attach_activation_monitor(self.model)
        self.inspector = WeightInspector(self.model, config.model)
        if not readonly:
            from engine.memory import MemorySystem

            from engine.memory import MemoryStoreError

            try:
                self.memory = MemorySystem(self.run_dir / "memory")
                self.memory.set_weight_inspector(self.inspector)
                self.coupled_modifications = len(self.memory.observations.query(category="coupled_modification"))
            except MemoryStoreError as exc:  # a damaged database must not keep the model unguarded
                if self.memory is not None:
                    self.memory.close()
                self.memory = None
                self.alert("HIGH", f"Memory system unavailable, running without it: {exc}")
        checkpoint_dir = self.run_dir / "checkpoints"
        if not readonly:
            self.checkpoints = CheckpointManager(self.model, checkpoint_dir)
        elif checkpoint_dir.is_dir():
            self.checkpoints = CheckpointManager(self.model, checkpoint_dir, memory_snapshot=False)
        health = self.scan_health()
        bench = self.progress_callback("benchmark")
        bench(0, 1, "measuring baseline perplexity")
        self.baseline_metrics = run_benchmarks(self.model, self.tokenizer, max_tokens=EVAL_TOKENS,
                                               seq_len=EVAL_SEQ_LEN)
        self.last_perplexity = float(self.baseline_metrics["perplexity"])
        bench(1, 1, f"baseline perplexity {self.last_perplexity:.3f}")
        if not readonly:
            save_baseline_metrics(self.baseline_metrics, self.run_dir / "baseline_metrics.json")
            baseline_id = self.save_checkpoint(
                {"purpose": "Baseline at engine start", "state": "baseline", "health": health["status"],
                 "model": config.model, "perplexity": self.last_perplexity, "tags": ["baseline"]},
                hold=health["status"] == "OK",
            )
            self.alert("INFO", f"Baseline checkpoint {baseline_id} saved (perplexity {self.last_perplexity:.3f})")
        self.publish_health(health)
        self.publish_checkpoints()
        self.publish_coupling()
        if self.checkpoints is not None:
            self.watcher = RunDirWatcher(self.checkpoints.manifest_dir, self.notice_checkpoint_change)
            if not self.watcher.start():
                self.alert("LOW", f"Not watching {self.checkpoints.manifest_dir} for other processes' checkpoints; "
                                  "they will show up at the next health scan instead")
        self.set_state(EngineState.IDLE, "ready")
        return True

    def bind_model(self) -> None:
        """Take the model, tokenizer, device and dtype from the model manager."""
        self.model = self.manager.model
        self.tokenizer = self.manager.tokenizer
        self.device = self.manager.device
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
        self.inspector = WeightInspector(self.model, self.config.model)
        if self.memory is not None:
            self.memory.set_weight_inspector(self.inspector)
        if self.checkpoints is not None:
            self.checkpoints = CheckpointManager(self.model, self.checkpoints.checkpoint_dir)

    # -- loops -----------------------------------------------------------------------
    def main_loop(self) -> None:
        while not self.exit_requested:
            try:
                self.idle_once()
            except EmergencyStopRequested:
                continue  # a late asynchronous stop that landed outside the experiment: nothing to unwind
        if self.shutdown_command is not None:
            self.finish_for_shutdown(self.shutdown_command[1])

    def idle_once(self) -> None:
        now = time.monotonic()
        if self.pending is not None and now >= self.pending.start_at:
            self.run_experiment(self.pending)
            return
        if self.signal.requested and self.signal.mode == EMERGENCY:
            self.idle_stop()
        timeout = max(0.0, self.next_health - now)
        if self.pending is not None:
            timeout = min(timeout, max(0.0, self.pending.start_at - now))
        try:
            item = self.commands.get(timeout=timeout)
        except queue.Empty:
            item = None
        if item is not None:
            self.handle(item, during_experiment=False)
        if self.exit_requested:
            return
        if self.checkpoints_dirty:
            self.sync_checkpoints()
        if time.monotonic() >= self.next_health:
            if self.watcher is None or not self.watcher.running:
                self.checkpoints_dirty = self.checkpoints is not None
            self.publish_health(self.scan_health())

    def idle_stop(self) -> None:
        reason = self.signal.reason or "operator"
        self.signal.clear()
        if self.pending is not None:
            self.pending = None
            self.engine.outcome = self.engine.outcome or "stopped"
            self.alert("HIGH", f"Emergency stop ({reason}): the scheduled restart of the experiment is cancelled",
                       source="emergency")
        else:
            self.alert("INFO", f"Emergency stop ({reason}) requested while no experiment is running: nothing to stop",
                       source="emergency")

    def error_loop(self) -> None:
        """After a failure: answer every command (refusing all but Shutdown) until shut down."""
        while not self.exit_requested:
            item = self.commands.get()
            if item is None:
                continue
            command_id, command = item
            if isinstance(command, Shutdown):
                self.exit_requested = True
                self.shutdown_command = (command_id, command)
            else:
                self.publish(CommandDone(command_id=command_id, command=command.kind, ok=False,
                                         message=f"refused: the engine is in the error state ({self.engine.error}); "
                                                 "shut it down and start again"))

    # -- commands --------------------------------------------------------------------
    def handle(self, item: tuple[int, Command] | None, during_experiment: bool) -> None:
        if item is None:
            return
        command_id, command = item
        handlers: dict[type, Callable[[Any], tuple[bool, str, str]]] = {
            Save: self.do_save,
            Restore: self.do_restore,
            Delete: self.do_delete,
            Compare: self.do_compare,
            Pause: self.do_pause,
            Resume: self.do_resume,
            EmergencyStop: self.do_emergency_stop,
            RunExperiment: self.do_run_experiment,
        }
        if isinstance(command, Shutdown):
            self.exit_requested = True  # the main loop ends; finish_for_shutdown runs after it
            self.shutdown_command = (command_id, command)
            return
        handler = handlers.get(type(command))
        if handler is None:
            ok, message, result = False, f"unknown command {type(command).__name__}", ""
        else:
            try:
                ok, message, result = handler(command)
            except EmergencyStopRequested:
                raise
            except Exception as exc:
                ok, message, result = False, f"{type(exc).__name__}: {exc}", ""
                self.alert("HIGH", f"Command {command.kind} failed: {message}")
        self.publish(CommandDone(command_id=command_id, command=command.kind, ok=ok, message=message, result=result))

    def finish_for_shutdown(self, command: Shutdown) -> None:
        """Shutdown while idle: save the final state (unless read-only or told not to)."""
        self.pending = None
        if command.checkpoint and not self.config.readonly and self.checkpoints is not None:
            try:
                self.final_checkpoint = self.save_checkpoint(
                    {"purpose": "Final checkpoint at shutdown", "state": "shutdown", "health": self.health_label(),
                     "tags": ["shutdown"]},
                    hold=False,
                )
            except Exception as exc:
                self.alert("HIGH", f"Final checkpoint at shutdown failed: {type(exc).__name__}: {exc}")
        self.set_state(EngineState.STOPPING, "shutting down")

    def need_checkpoints(self) -> None:
        if self.checkpoints is None:
            raise RuntimeError("no checkpoint directory is open (read-only engine without checkpoints)")

    def do_save(self, command: Save) -> tuple[bool, str, str]:
        self.need_checkpoints()
        label = self.health_label()
        checkpoint_id = self.save_checkpoint(
            {"purpose": command.purpose, "state": command.state, "health": label, "tags": [command.state]},
            hold=False,
        )
        return True, f"saved {checkpoint_id} (health {label})", checkpoint_id

    def do_restore(self, command: Restore) -> tuple[bool, str, str]:
        self.need_checkpoints()
        ok = self.restore(command.checkpoint_id)
        if not ok:
            return False, self.checkpoints.last_error or "restore failed", ""
        health = self.scan_health()
        self.publish_health(health)
        if self.baseline_metrics is not None:
            self.evaluate(raise_on_critical=False)
        return True, f"restored {command.checkpoint_id} (health {health['status']})", command.checkpoint_id

    def do_delete(self, command: Delete) -> tuple[bool, str, str]:
        self.need_checkpoints()
        ok = self.checkpoints.delete_checkpoint(command.checkpoint_id)
        if ok:
            self.publish(CheckpointDeleted(checkpoint_id=command.checkpoint_id))
            self.publish_checkpoints()
            return True, f"deleted {command.checkpoint_id}", command.checkpoint_id
        return False, getattr(self.checkpoints, "last_error", None) or f"could not delete {command.checkpoint_id}", ""

    def do_compare(self, command: Compare) -> tuple[bool, str, str]:
        self.need_checkpoints()
        if command.checkpoint_b in ("", "current"):
            report = self.checkpoints.compare_with_model(command.checkpoint_a)
            other = "current"
        else:
            report = self.checkpoints.compare_checkpoints(command.checkpoint_a, command.checkpoint_b)
            other = command.checkpoint_b
        differences = tuple(
            TensorChange(layer=d["layer"], change=float(d["change"]), relative=float(d.get("relative", 0.0)),
                         severity=policy.change_severity(float(d.get("relative", 0.0)), float(d["change"])))
            for d in report["differences"][:MAX_DIFFERENCES]
        )
        self.publish(ComparisonReady(checkpoint_a=command.checkpoint_a, checkpoint_b=other,
                                     num_differences=int(report["num_differences"]), differences=differences))
        return True, f"{report['num_differences']} tensors differ", ""

    def do_pause(self, command: Pause) -> tuple[bool, str, str]:
        if self.ctx is None:
            return False, "no experiment is running", ""
        self.paused = True
        return True, "the experiment pauses at its next step", ""

    def do_resume(self, command: Resume) -> tuple[bool, str, str]:
        if self.ctx is None:
            return False, "no experiment is running", ""
        was = self.paused
        self.paused = False
        return True, "resumed" if was else "the experiment was not paused", ""

    def do_emergency_stop(self, command: EmergencyStop) -> tuple[bool, str, str]:
        # Engine.submit already raised the flag; reaching here means the stop is being handled.
        return True, f"emergency stop requested ({command.reason})", ""

    def do_run_experiment(self, command: RunExperiment) -> tuple[bool, str, str]:
        if self.ctx is not None:
            return False, f"an experiment is already running ({self.experiment_name}); stop it first", ""
        name = self.queue_experiment(command.path or DEMO, delay=0.0)
        if name is None:
            return False, self.engine.error_experiment or "the experiment could not be loaded", ""
        return True, f"starting {name}", name

    # -- checkpoints -----------------------------------------------------------------
    def health_label(self) -> str:
        """Health to record in a checkpoint's metadata: a fresh scan, worsened by a bad perplexity."""
        status = self.scan_health()["status"]
        if status == "OK" and self.perplexity_status != "OK":
            status = self.perplexity_status
        return status

    def save_checkpoint(self, metadata: dict, *, hold: bool) -> str:
        metadata = {**metadata, "experiment": self.experiment_name, "step": self.step}
        started = time.perf_counter()
        checkpoint_id = self.checkpoints.save_checkpoint(metadata=metadata)
        seconds = time.perf_counter() - started
        if hold:
            self.checkpoints.hold_in_memory(checkpoint_id)
        info = self.checkpoint_info(self.checkpoints.get_checkpoint(checkpoint_id))
        self.publish(CheckpointSaved(checkpoint=info, seconds=seconds))
        self.publish_checkpoints()
        return checkpoint_id

    def restore(self, checkpoint_id: str) -> bool:
        """Restore one checkpoint, publishing progress and the result."""
        report = self.progress_callback("restore")
        report(0, 1, f"restoring {checkpoint_id}")
        started = time.perf_counter()
        ok = self.checkpoints.restore_checkpoint(checkpoint_id)
        seconds = time.perf_counter() - started
        report(1, 1, "restored" if ok else "restore failed")
        self.publish(CheckpointRestored(checkpoint_id=checkpoint_id, ok=ok, seconds=seconds,
                                        message="" if ok else (self.checkpoints.last_error or "restore failed")))
        if ok:
            self.perplexity_status = "OK"
            self.last_perplexity = None
        return ok

    @staticmethod
    def checkpoint_info(entry: dict) -> CheckpointInfo:
        metadata = entry.get("metadata") or {}
        tags = metadata.get("tags") or ()
        return CheckpointInfo(
            id=entry["id"],
            created=float(entry.get("timestamp") or 0.0),
            purpose=str(metadata.get("purpose", "")),
            state=str(metadata.get("state", "")),
            size_bytes=int(entry.get("size_bytes") or 0),
            verified=entry.get("verified"),
            health=str(metadata.get("health", "")),
            tags=tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else (str(tags),),
            metadata_json=json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str),
        )

    def publish_checkpoints(self, entries: list[dict] | None = None) -> None:
        if self.checkpoints is None:
            return
        if entries is None:
            entries = self.checkpoints.list_checkpoints()
        self.known_checkpoints = tuple(e["id"] for e in entries)
        self.publish(CheckpointList(checkpoints=tuple(self.checkpoint_info(e) for e in entries),
                                    disk_usage=int(self.checkpoints.get_disk_usage())))

    def notice_checkpoint_change(self) -> None:
        """Called from the watchdog thread: only a flag and a wake-up."""
        if not self.checkpoints_dirty:
            self.checkpoints_dirty = True
            self.commands.put(None)

    def sync_checkpoints(self) -> None:
        """Re-list after a change on disk; publish what other processes added or removed."""
        self.checkpoints_dirty = False
        if self.checkpoints is None:
            return
        entries = self.checkpoints.list_checkpoints()
        ids = tuple(e["id"] for e in entries)
        if ids == self.known_checkpoints:
            return
        before = set(self.known_checkpoints)
        self.publish_checkpoints(entries)  # the list first: a client that sees the news also has the list
        for entry in entries:
            if entry["id"] not in before:
                self.publish(CheckpointSaved(checkpoint=self.checkpoint_info(entry), origin="external"))
        for gone in before - set(ids):
            self.publish(CheckpointDeleted(checkpoint_id=gone, origin="external"))

    def prune_automatic(self) -> None:
        autos = [e for e in self.checkpoints.list_checkpoints() if (e.get("metadata") or {}).get("state") == "auto"]
        keep = getattr(self.checkpoints, "memory_snapshot_id", None)
        for entry in autos[:-KEEP_AUTO_CHECKPOINTS]:
            if entry["id"] != keep and self.checkpoints.delete_checkpoint(entry["id"]):
                self.publish(CheckpointDeleted(checkpoint_id=entry["id"]))

    # -- health ----------------------------------------------------------------------
    def scan_health(self) -> dict:
        self.check_run_dir()
        result = self.safety.check_model_health(self.model)
        self.last_health = result
        self.next_health = time.monotonic() + self.config.health_interval
        return result

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

    def publish_health(self, result: dict) -> None:
        baseline = self.baseline_metrics.get("perplexity") if self.baseline_metrics else None
        baseline = float(baseline) if baseline is not None else None
        self.publish(
            HealthSnapshot(
                status=str(result.get("status", "OK")),
                nan_count=int(result.get("nan_count") or 0),
                inf_count=int(result.get("inf_count") or 0),
                max_abs_weight=float(result.get("max_abs_weight") or 0.0),
                grad_norm=result.get("grad_norm"),
                perplexity=self.last_perplexity,
                baseline_perplexity=baseline,
                device_memory_used=result.get("device_memory_used"),
                device_memory_total=result.get("device_memory_total"),
                host_memory_used=int(result.get("host_memory_used") or 0),
                host_memory_total=int(result.get("host_memory_total") or 0),
                issues=len(result.get("issues") or ()),
                scan_ms=float(result.get("scan_seconds") or 0.0) * 1000.0,
                step=self.step,
                gauges=health_gauges(result, perplexity=self.last_perplexity, baseline_perplexity=baseline,
                                     thresholds=self.safety.thresholds),
            )
        )

    def measure_perplexity(self) -> float:
        from engine.benchmarks import run_benchmarks

        batch = self.ctx.batch_size if self.ctx is not None else 8
        metrics = run_benchmarks(self.model, self.tokenizer, max_tokens=EVAL_TOKENS, seq_len=EVAL_SEQ_LEN,
                                 batch_size=batch)
        return float(metrics["perplexity"])

    def evaluate(self, raise_on_critical: bool) -> float | None:
        """Measure perplexity against the baseline; raise for the degradation procedure if asked."""
        if not self.baseline_metrics:
            return None
        perplexity = self.measure_perplexity()
        baseline = float(self.baseline_metrics["perplexity"])
        self.last_perplexity = perplexity
        verdict = self.safety.check_perplexity(perplexity, baseline)
        self.perplexity_status = str(verdict.get("status", "OK"))
        self.publish_health(self.last_health or self.scan_health())
        if raise_on_critical and self.perplexity_status == "CRITICAL":
            raise ProcedureRequired("degraded", {"perplexity": perplexity, "baseline": baseline})
        return perplexity

    def forward_alert(self, alert: dict) -> None:
        """SafetyMonitor listener: every alert it raises becomes an Alert event."""
        self.publish(Alert(severity=_severity_name(alert.get("severity", "INFO")), message=str(alert.get("message", "")),
                           source=str(alert.get("source") or "safety")))

    # -- coupling --------------------------------------------------------------------
    def publish_coupling(self) -> None:
        if self.inspector is None:
            return
        groups = tuple(tuple(g) for g in self.inspector.get_shared_weights())
        storages = []
        for entry in self.inspector.coupling_report():
            storage = entry.get("storage")
            if isinstance(storage, str):
                storages.append(storage)
            else:
                storages.append(" ".join(f"{k}={v}" for k, v in entry.items() if k != "names"))
        self.publish(CouplingView(groups=groups, storages=tuple(storages),
                                  coupled_modifications=self.coupled_modifications,
                                  recent=tuple(reversed(self.recent_coupled))))

    def modification_recorded(self, layer_name: str) -> None:
        try:
            coupled = self.inspector.get_shared_layers(layer_name) if self.inspector is not None else []
        except ValueError:
            coupled = []
        if coupled:
            self.coupled_modifications += 1
            self.recent_coupled.append(f"step {self.step}: {layer_name} ↔ {', '.join(coupled)}")
            self.publish_coupling()

    # -- experiments -----------------------------------------------------------------
    def queue_experiment(self, path: str, delay: float) -> str | None:
        """Load an experiment and schedule it; None (and a HIGH alert) when the file is unusable."""
        self.engine.error_experiment = None
        try:
            name, fn = load_experiment(path)
        except ExperimentLoadError as exc:
            self.engine.error_experiment = str(exc)
            self.engine.outcome = "load_error"
            self.alert("HIGH", f"Experiment not started: {exc}", source="experiment")
            return None
        options = dict(self.config.experiment_options)
        if name == DEMO and path in (None, DEMO):
            options.setdefault("auto_restart", True)
        ctx = ExperimentContext(self, name, options)
        self.pending = _Run(name, fn, ctx, time.monotonic() + delay)
        return name

    def run_experiment(self, run: _Run) -> None:
        self.pending = None
        self.engine.outcome = None
        self.ctx = run.ctx
        self.experiment_name = run.name
        oom_attempts = 0
        try:
            while True:
                self.set_state(EngineState.RUNNING, f"running {run.name}")
                result = self.call_experiment(run)
                self.paused = False
                if result[0] == "oom":
                    oom_attempts += 1
                    if emergency.out_of_memory(self, run.ctx, result[1], oom_attempts, MAX_OOM_RETRIES):
                        run.ctx.restarts += 1
                        continue
                    self.engine.outcome = "failed" if self.model_is_healthy() else "unrecovered"
                else:
                    self.conclude(run, result)
                break
        finally:
            self.ctx = None
        if self.engine.state != EngineState.ERROR:
            self.set_state(EngineState.IDLE, f"experiment {self.engine.outcome or 'ended'}")

    def call_experiment(self, run: _Run) -> tuple:
        """Run `run(ctx)` once inside the stop machinery; return how it ended."""
        hooks = install_stop_hooks(self.model, self.signal)
        try:
            try:
                with self.supervisor.guard():
                    run.fn(run.ctx)
                return ("finished",)
            finally:
                self.supervisor.leave()
                remove_hooks(hooks)
        except ExperimentFinished:
            return ("finished",)
        except EmergencyStopRequested as exc:
            self.halted_at = time.perf_counter()
            return ("stop", self.signal.mode, self.signal.reason or exc.reason)
        except ProcedureRequired as exc:
            return ("procedure", exc)
        except BaseException as exc:
            if _is_out_of_memory(exc):
                return ("oom", exc)
            if isinstance(exc, (Exception, SystemExit)):
                return ("error", exc)
            raise

    def conclude(self, run: _Run, result: tuple) -> None:
        """After the experiment unwound: report, recover, decide the outcome and any restart."""
        engine = self.engine
        kind = result[0]
        if kind == "finished":
            engine.outcome = "finished"
            self.alert("INFO", f"Experiment {run.name} finished after {run.ctx.steps} steps", source="experiment")
            return
        if kind == "stop":
            mode, reason = result[1], result[2]
            self.signal.clear()
            if mode == SHUTDOWN:
                engine.outcome = "stopped"
                self.alert("INFO", f"Experiment {run.name} stopped for shutdown at step {run.ctx.steps}",
                           source="experiment")
                return
            self.set_state(EngineState.STOPPING, f"emergency stop ({reason})")
            recovered = emergency.operator_stop(self, reason)
            engine.outcome = "stopped" if recovered else "unrecovered"
            return
        if kind == "procedure":
            exc: ProcedureRequired = result[1]
            self.set_state(EngineState.RECOVERING, exc.kind)
            if exc.kind == "degraded":
                recovered = emergency.degraded(self, exc.detail["perplexity"], exc.detail["baseline"])
            else:
                recovered = emergency.unhealthy_weights(self, exc.detail)
            engine.outcome = "rolled_back" if recovered else "unrecovered"
            self.after_automatic_rollback(run, recovered)
            return
        exc = result[1]
        self.set_state(EngineState.RECOVERING, "experiment raised")
        recovered = emergency.experiment_failed(self, exc, run.name)
        engine.outcome = "failed" if recovered else "unrecovered"

    def after_automatic_rollback(self, run: _Run, recovered: bool) -> None:
        if recovered and run.ctx.options.get("auto_restart"):
            run.ctx.restarts += 1
            self.pending = _Run(run.name, run.fn, run.ctx, time.monotonic() + RESTART_DELAY)
            self.alert("INFO", f"Automatic rollback done; {run.name} restarts in {RESTART_DELAY:.0f} s "
                               "(emergency stop cancels the restart)", source="emergency")
        else:
            self.alert("INFO", f"Automatic rollback done; the experiment {run.name} stays stopped. "
                               "Start it again with RunExperiment when ready", source="emergency")

    def model_is_healthy(self) -> bool:
        return self.scan_health()["status"] != "CRITICAL"

    # ExperimentHost: called from inside run(ctx), in this thread.
    def experiment_log(self, ctx: ExperimentContext, text: str) -> None:
        self.publish(LogLine(text=text, source=ctx.name))

    def experiment_step(self, ctx: ExperimentContext, name: str) -> int:
        self.signal.check()
        ctx.steps += 1
        self.step, self.step_name = ctx.steps, name
        self.publish(ExperimentStep(experiment=ctx.name, step=ctx.steps, name=name))
        self.service_commands()
        health = self.scan_health()
        self.publish_health(health)
        if health["status"] == "CRITICAL":
            raise ProcedureRequired("unhealthy", health)
        every = self.config.evaluate_every
        if every and ctx.steps % every == 0:
            self.evaluate(raise_on_critical=True)
        every = self.config.auto_checkpoint_every
        if every and ctx.steps % every == 0 and health["status"] == "OK" and self.perplexity_status == "OK":
            self.auto_checkpoint(ctx)
        if self.paused:
            self.pause_here()
        self.signal.check()
        max_steps = ctx.options.get("max_steps")
        if max_steps and ctx.steps >= int(max_steps):
            raise ExperimentFinished()
        return ctx.steps

    def auto_checkpoint(self, ctx: ExperimentContext) -> None:
        try:
            self.save_checkpoint(
                {"purpose": f"Automatic checkpoint at step {ctx.steps}", "state": "auto", "health": "OK",
                 "perplexity": self.last_perplexity, "tags": ["auto"]},
                hold=True,
            )
            self.prune_automatic()
        except Exception as exc:
            self.alert("HIGH", f"Automatic checkpoint at step {ctx.steps} failed: {type(exc).__name__}: {exc}")

    def service_commands(self) -> None:
        while True:
            try:
                item = self.commands.get_nowait()
            except queue.Empty:
                break
            self.handle(item, during_experiment=True)
            self.signal.check()
        if self.checkpoints_dirty:
            self.sync_checkpoints()

    def pause_here(self) -> None:
        self.set_state(EngineState.PAUSED, f"paused at step {self.step}")
        while self.paused and not self.signal.requested:
            if self.serve_commands(self.next_health - time.monotonic()):
                self.publish_health(self.scan_health())
        self.signal.check()
        self.set_state(EngineState.RUNNING, f"resumed at step {self.step}")

    def serve_commands(self, timeout: float) -> bool:
        """Inside an experiment: handle one command (waiting up to `timeout`); True when a health scan is due."""
        try:
            item = self.commands.get(timeout=max(0.0, timeout))
        except queue.Empty:
            item = None
        self.handle(item, during_experiment=True)
        if self.checkpoints_dirty:
            self.sync_checkpoints()
        return time.monotonic() >= self.next_health

    def experiment_wait(self, ctx: ExperimentContext, seconds: float) -> None:
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            self.signal.check()
            now = time.monotonic()
            if now >= deadline:
                return
            if self.serve_commands(min(deadline, self.next_health) - now):
                health = self.scan_health()
                self.publish_health(health)
                if health["status"] == "CRITICAL":
                    raise ProcedureRequired("unhealthy", health)

