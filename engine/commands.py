"""Commands: what a client asks the engine to do, as small immutable records.

Clients put these on the engine's queue with `Engine.submit(command)`, which
returns a command id; the engine answers with a `CommandDone` event carrying it.
Emergency stop is the exception: `Engine.emergency_stop()` acts at once through
a flag and does not wait behind queued commands (an `EmergencyStop` command is
accepted too, for symmetry, and does the same).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True, slots=True)
class Command:
    kind: ClassVar[str] = "command"
    mutates: ClassVar[bool] = True  # changes the model or run directory: refused by a read-only engine


@dataclass(frozen=True, slots=True)
class Save(Command):
    kind: ClassVar[str] = "save"
    purpose: str = "Manual checkpoint"
    state: str = "manual"


@dataclass(frozen=True, slots=True)
class Restore(Command):
    kind: ClassVar[str] = "restore"
    checkpoint_id: str = ""


@dataclass(frozen=True, slots=True)
class Delete(Command):
    kind: ClassVar[str] = "delete"
    checkpoint_id: str = ""


@dataclass(frozen=True, slots=True)
class Compare(Command):
    """Compare two checkpoints; `checkpoint_b="current"` compares with the live model."""

    kind: ClassVar[str] = "compare"
    mutates: ClassVar[bool] = False
    checkpoint_a: str = ""
    checkpoint_b: str = "current"


@dataclass(frozen=True, slots=True)
class Pause(Command):
    kind: ClassVar[str] = "pause"


@dataclass(frozen=True, slots=True)
class Resume(Command):
    kind: ClassVar[str] = "resume"


@dataclass(frozen=True, slots=True)
class EmergencyStop(Command):
    kind: ClassVar[str] = "emergency_stop"
    reason: str = "operator"


@dataclass(frozen=True, slots=True)
class RunExperiment(Command):
    """Run an experiment file (`None` or "demo": the built-in demo experiment)."""

    kind: ClassVar[str] = "run_experiment"
    path: str | None = None


@dataclass(frozen=True, slots=True)
class Shutdown(Command):
    """Stop any experiment safely (checkpointing its state), then end the thread."""

    kind: ClassVar[str] = "shutdown"
    mutates: ClassVar[bool] = False
    checkpoint: bool = True


@dataclass(frozen=True, slots=True)
class PlanRevert(Command):
    """Ask what reverting edit `edit_id` would change; answered with a RevertPlanned event."""

    kind: ClassVar[str] = "plan_revert"
    mutates: ClassVar[bool] = False
    edit_id: int = 0


@dataclass(frozen=True, slots=True)
class RevertEdit(Command):
    """Revert edit `edit_id` (with `cascade`, the later edits on the same tensors too, newest first).

    `expected`: the edit ids the operator confirmed (RevertPlanned.edits); when the journal
    has changed since and the revert would undo others, it is refused. Empty: no such check.
    """

    kind: ClassVar[str] = "revert_edit"
    edit_id: int = 0
    cascade: bool = False
    expected: tuple[int, ...] = ()
