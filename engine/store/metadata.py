"""Checkpoint metadata: the states a checkpoint can be in, the one builder of its metadata dict,
and the check every metadata dict passes before it is stored."""

from __future__ import annotations

import json
from typing import Any, Iterable

from engine.store.errors import MetadataTooLarge

MAX_METADATA_BYTES = 1 << 20


class CheckpointState:
    """The "state" a checkpoint's metadata records (a Save command may also name its own)."""

    BASELINE = "baseline"  # the engine's start, or a new baseline after a reload
    MANUAL = "manual"  # the operator's save
    AUTO = "auto"  # saved automatically (every N steps or N modifications); pruned beyond a limit
    FORENSIC = "forensic"  # the damaged state a rollback left, kept for inspection
    RECOVERY = "recovery"  # saved in the middle of a failure: holds the damage
    SHUTDOWN = "shutdown"  # the final state at shutdown
    SUCCESS = "success"  # the guide's experiment template: a modification that improved the model
    EDIT = "edit"  # taken when an edit (engine.edits) commits and the edit_checkpoint policy asks


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


def encode_metadata(metadata) -> dict:
    """Validate user metadata (before anything is written) and return the dict to store."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(
            f"checkpoint metadata must be a dict, not {type(metadata).__name__}; "
            'pass e.g. metadata={"purpose": "..."}'
        )
    try:
        text = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        where = _first_unserialisable(metadata, "metadata", set())
        raise TypeError(
            f"checkpoint metadata must be JSON-serialisable: {where}. Convert it to a str, "
            f"number, bool, None, list or dict (for a tensor: .item() or .tolist()). ({exc})"
        ) from None
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(
            f"checkpoint metadata is {size} bytes as JSON, over the {MAX_METADATA_BYTES}-byte "
            "limit; keep large data (arrays, logs) in files and put their paths in the metadata."
        )
    return json.loads(text)


def _first_unserialisable(value, path: str, seen: set[int]) -> str:
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return f"{path} contains itself (a cycle)"
        seen = seen | {id(value)}
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{path} has a key of type {type(k).__name__} ({k!r})"
            found = _first_unserialisable(v, f"{path}[{k!r}]", seen)
            if found:
                return found
        return ""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_unserialisable(v, f"{path}[{i}]", seen)
            if found:
                return found
        return ""
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}"
