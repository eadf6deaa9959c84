"""What a shutdown did with the final checkpoint: `Engine.shutdown()` returns one of these.

A client must not report success when the model's last state was lost: the console and
headless mode exit with EXIT_NO_FINAL_CHECKPOINT and print `describe()` as their last line
when `ok` is False. No torch here (the console imports it).
"""

from __future__ import annotations

from dataclasses import dataclass

WRITTEN = "written"  # the final checkpoint was saved; `checkpoint_id` names it
SKIPPED = "skipped"  # none was due (read-only, not asked for, no model loaded); `reason` says which
FAILED = "failed"  # the final save raised, or the engine had failed; `reason` says why
TIMED_OUT = "timed_out"  # the engine thread did not stop in time; the process exits without it

#: exit code of the console and of headless mode when the final checkpoint was due and not written
EXIT_NO_FINAL_CHECKPOINT = 5


@dataclass(frozen=True)
class ShutdownResult:
    status: str
    checkpoint_id: str = ""
    reason: str = ""

    @property
    def ok(self) -> bool:
        """True unless a final checkpoint was due and is not on disk."""
        return self.status in (WRITTEN, SKIPPED)

    def describe(self) -> str:
        """One line for the operator."""
        if self.status == WRITTEN:
            return f"final checkpoint {self.checkpoint_id} written"
        if self.status == SKIPPED:
            return f"no final checkpoint: {self.reason}"
        return f"the final checkpoint was NOT written: {self.reason}"
