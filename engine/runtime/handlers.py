"""The engine thread's answers to client commands (engine.commands), one handler per command type.

Every command but Shutdown is answered by exactly one CommandDone; Shutdown is
answered when the engine thread ends (EngineCore.teardown). A handler that
raises is answered ok=False and reported as a HIGH alert. The events a command
causes (CheckpointSaved, CheckpointDeleted, ...) go out before its answer; the
CheckpointList it changed goes out right after it (reading every manifest is not
on the way of the answer an operator waits for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine.commands import (Command, Compare, Delete, EmergencyStop, Pause, PlanRevert, Restore, Resume, RevertEdit,
                             RunExperiment, Save, Shutdown)
from engine.events import CommandDone, ComparisonReady, RevertPlanned, TensorChange
from engine.policy import change_severity
from engine.runtime.experiment_context import DEMO
from engine.runtime.stop import EmergencyStopRequested
from engine.store.metadata import checkpoint_metadata

MAX_DIFFERENCES = 64  # tensors listed in a ComparisonReady


@dataclass(frozen=True)
class Reply:
    """A handler's answer, sent as the command's CommandDone."""

    ok: bool
    message: str
    result: str = ""


class CommandHandlers:
    """Answers commands in the engine thread; the type -> handler table is built once."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore
        self._table: dict[type, Callable[[Any], Reply]] = {
            Save: self.save,
            Restore: self.restore,
            Delete: self.delete,
            Compare: self.compare,
            Pause: self.pause,
            Resume: self.resume,
            EmergencyStop: self.emergency_stop,
            RunExperiment: self.run_experiment,
            PlanRevert: self.plan_revert,
            RevertEdit: self.revert_edit,
        }

    def handle(self, item: tuple[int, Command] | None) -> None:
        """Answer one queued (id, command); None (a wake-up) is ignored."""
        if item is None:
            return
        command_id, command = item
        if isinstance(command, Shutdown):
            self.accept_shutdown(command_id, command)
            return
        with self._core.sync.list_after():  # the operator waits for the answer; the checkpoint list follows it
            self._answer(command_id, command, self._reply(command))

    def _reply(self, command: Command) -> Reply:
        handler = self._table.get(type(command))
        if handler is None:
            return Reply(False, f"unknown command {type(command).__name__}")
        try:
            return handler(command)
        except EmergencyStopRequested:
            raise
        except Exception as exc:
            reply = Reply(False, f"{type(exc).__name__}: {exc}")
            self._core.alert("HIGH", f"Command {command.kind} failed: {reply.message}")
            return reply

    def refuse(self, item: tuple[int, Command] | None, message: str) -> None:
        """In the error state: accept Shutdown, refuse everything else with `message`."""
        if item is None:
            return
        command_id, command = item
        if isinstance(command, Shutdown):
            self.accept_shutdown(command_id, command)
        else:
            self._answer(command_id, command, Reply(False, message))

    def accept_shutdown(self, command_id: int, command: Shutdown) -> None:
        """The serving loop ends; the core finishes the shutdown and answers it."""
        self._core.exit_requested = True
        self._core.shutdown_command = (command_id, command)

    def _answer(self, command_id: int, command: Command, reply: Reply) -> None:
        self._core.publish(CommandDone(command_id=command_id, command=command.kind, ok=reply.ok,
                                       message=reply.message, result=reply.result))

    def _need_checkpoints(self) -> Any:
        checkpoints = self._core.checkpoints
        if checkpoints is None:
            raise RuntimeError("no checkpoint directory is open (read-only engine without checkpoints)")
        return checkpoints

    # -- the handlers ---------------------------------------------------------------------------
    def save(self, command: Save) -> Reply:
        self._need_checkpoints()
        label = self._core.health.label()
        checkpoint_id = self._core.save_checkpoint(checkpoint_metadata(command.state, command.purpose, health=label),
                                                   hold=False)
        return Reply(True, f"saved {checkpoint_id} (health {label})", checkpoint_id)

    def restore(self, command: Restore) -> Reply:
        checkpoints = self._need_checkpoints()
        if not self._core.restore(command.checkpoint_id):
            return Reply(False, checkpoints.last_error or "restore failed")
        health = self._core.health
        result = health.scan()
        health.publish(result)
        if health.baseline_metrics is not None:
            health.evaluate()
        return Reply(True, f"restored {command.checkpoint_id} (health {result['status']})", command.checkpoint_id)

    def delete(self, command: Delete) -> Reply:
        checkpoints = self._need_checkpoints()
        if self._core.sync.delete(command.checkpoint_id):
            return Reply(True, f"deleted {command.checkpoint_id}", command.checkpoint_id)
        return Reply(False, getattr(checkpoints, "last_error", None) or f"could not delete {command.checkpoint_id}")

    def compare(self, command: Compare) -> Reply:
        checkpoints = self._need_checkpoints()
        if command.checkpoint_b in ("", "current"):
            report = checkpoints.compare_with_model(command.checkpoint_a)
            other = "current"
        else:
            report = checkpoints.compare_checkpoints(command.checkpoint_a, command.checkpoint_b)
            other = command.checkpoint_b
        differences = []
        for difference in report["differences"][:MAX_DIFFERENCES]:
            change, relative = float(difference["change"]), float(difference.get("relative", 0.0))
            differences.append(TensorChange(layer=difference["layer"], change=change, relative=relative,
                                            severity=change_severity(relative, change)))
        self._core.publish(ComparisonReady(checkpoint_a=command.checkpoint_a, checkpoint_b=other,
                                           num_differences=int(report["num_differences"]),
                                           differences=tuple(differences)))
        return Reply(True, f"{report['num_differences']} tensors differ")

    def pause(self, command: Pause) -> Reply:
        runner = self._core.runner
        if runner.ctx is None:
            return Reply(False, "no experiment is running")
        runner.paused = True
        return Reply(True, "the experiment pauses at its next step")

    def resume(self, command: Resume) -> Reply:
        runner = self._core.runner
        if runner.ctx is None:
            return Reply(False, "no experiment is running")
        was = runner.paused
        runner.paused = False
        return Reply(True, "resumed" if was else "the experiment was not paused")

    def emergency_stop(self, command: EmergencyStop) -> Reply:
        # Engine.submit already raised the flag; reaching here means the stop is being handled.
        return Reply(True, f"emergency stop requested ({command.reason})")

    def run_experiment(self, command: RunExperiment) -> Reply:
        core = self._core
        if core.runner.ctx is not None:
            return Reply(False, f"an experiment is already running ({core.experiment_name}); stop it first")
        name = core.runner.queue(command.path or DEMO, delay=0.0)
        if name is None:
            return Reply(False, core.engine.error_experiment or "the experiment could not be loaded")
        return Reply(True, f"starting {name}", name)

    def plan_revert(self, command: PlanRevert) -> Reply:
        from engine.edits import JournalWriteFailed, RevertRefused

        try:
            plan, later = self._core.edit_journal().plan(command.edit_id)
        except (KeyError, RevertRefused, JournalWriteFailed) as exc:
            return Reply(False, str(exc).strip("'\""))
        tensors = sorted({n for record in plan for n in record.names})
        self._core.publish(RevertPlanned(edit_id=command.edit_id, edits=tuple(r.id for r in plan),
                                         tensors=tuple(tensors), later=tuple(later)))
        return Reply(True, f"reverting edit {command.edit_id} undoes {len(plan)} edit(s)")

    def revert_edit(self, command: RevertEdit) -> Reply:
        """Revert through the journal; its listener publishes each revert entry (EditRecorded)."""
        from engine.edits import JournalWriteFailed, RevertFailed, RevertRefused

        journal = self._core.edit_journal()
        try:
            if command.expected:
                plan, _later = journal.plan(command.edit_id)
                if tuple(r.id for r in plan) != tuple(command.expected):
                    return Reply(False, f"the journal changed since you confirmed: reverting edit {command.edit_id} "
                                        f"now undoes edit(s) {', '.join(str(r.id) for r in plan)}; look again. "
                                        "The model was not changed.")
            entries = journal.revert(command.edit_id, cascade=command.cascade)
        except (KeyError, RevertRefused, RevertFailed, JournalWriteFailed) as exc:
            return Reply(False, str(exc).strip("'\""))
        return Reply(True, f"reverted edit {command.edit_id}" + (f" and {len(entries) - 1} later edit(s)"
                                                                if len(entries) > 1 else ""),
                     ",".join(map(str, entries)))
