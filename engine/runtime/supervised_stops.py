"""How a supervised script's run ends early: `Stopped` and its kinds (re-exported by engine.supervise).

`Stopped` derives from BaseException, like the engine's own stop, so that a
training loop's `except Exception:` cannot swallow it: the loop ends. When it
is raised the model is already in a known state: rolled back to `checkpoint`
(emergency stop, automatic rollback) or saved as `checkpoint` (shutdown).
No torch here.
"""

from __future__ import annotations


class Stopped(BaseException):
    """The supervised run was stopped; `reason` says why, `checkpoint` which checkpoint the model now matches.

    `recovered` is False only when the rollback failed (every checkpoint and the
    fallbacks): then `checkpoint` is "" and the model may be damaged.
    """

    rolled_back = True  # the weights were restored (ShutdownRequested: saved instead)

    def __init__(self, reason: str, checkpoint: str = "", *, recovered: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.checkpoint = checkpoint
        self.recovered = recovered

    def __str__(self) -> str:
        if not self.recovered:
            return f"{self.reason} (the rollback failed: the model may be damaged)"
        if not self.checkpoint:
            return self.reason
        if self.rolled_back:
            return (f"{self.reason} (model rolled back to checkpoint {self.checkpoint}, gradients cleared; an "
                    "optimizer built before holds state of the discarded weights: rebuild it to train on)")
        return f"{self.reason} (model saved as checkpoint {self.checkpoint})"


class EmergencyStopped(Stopped):
    """An emergency stop (a console's ctrl+x, an EmergencyStop command, a policy `stop` action): rolled back."""


class RolledBack(Stopped):
    """The policy decided an automatic rollback (NaN/Inf, a spike, degraded perplexity): rolled back."""


class ShutdownRequested(Stopped):
    """`redline stop` or a console's shutdown: the final checkpoint is `checkpoint`; nothing was rolled back."""

    rolled_back = False
