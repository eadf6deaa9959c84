"""Checkpoint metadata: the states a checkpoint can be in, and the one builder of its metadata dict."""

from __future__ import annotations

from typing import Any, Iterable


class CheckpointState:
    """The "state" a checkpoint's metadata records (a Save command may also name its own)."""

    BASELINE = "baseline"  # the engine's start, or a new baseline after a reload
    MANUAL = "manual"  # the operator's save
    AUTO = "auto"  # saved automatically (every N steps or N modifications); pruned beyond a limit
    FORENSIC = "forensic"  # the damaged state a rollback left, kept for inspection
    RECOVERY = "recovery"  # saved in the middle of a failure: holds the damage
    SHUTDOWN = "shutdown"  # the final state at shutdown
    SUCCESS = "success"  # the guide's experiment template: a modification that improved the model


#: states never used as a rollback target (they may hold the damage)
UNUSABLE_STATES = frozenset({CheckpointState.FORENSIC, CheckpointState.RECOVERY})


def checkpoint_metadata(state: str, purpose: str | None = None, *, health: str | None = None,
                        tags: Iterable[str] | None = None, **extra: Any) -> dict[str, Any]:
    """Metadata for a save: purpose, state, health and tags (default: the state), then `extra`.

    Keys whose value is None are left out, so a field is either known or absent.
    """
    metadata: dict[str, Any] = {"purpose": purpose, "state": state, "health": health,
                                "tags": list(tags) if tags is not None else [state]}
    metadata.update(extra)
    return {key: value for key, value in metadata.items() if value is not None}


def state_of(entry: dict) -> str:
    """The state of a `list_checkpoints()` entry ("" when its metadata names none)."""
    return str((entry.get("metadata") or {}).get("state", ""))


def rollback_target(entry: dict) -> bool:
    """Whether a checkpoint may be rolled back to: saved healthy, and not a damaged state."""
    metadata = entry.get("metadata") or {}
    return metadata.get("health") == "OK" and metadata.get("state") not in UNUSABLE_STATES
