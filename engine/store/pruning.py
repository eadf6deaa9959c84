"""The one pruning policy: automatic checkpoints beyond the newest N are deleted; nothing else ever is."""

from __future__ import annotations

from typing import Collection, Iterable, Sequence

from engine.store.metadata import CheckpointState, state_of

KEEP_AUTOMATIC = 20  # automatic checkpoints the engine keeps per run directory


def beyond_newest(ids: Sequence[str], keep: int, protected: Collection[str] = ()) -> list[str]:
    """Of `ids` (oldest first), those older than the newest `keep`, never a protected one."""
    older = ids[:-keep] if keep > 0 else ids
    return [checkpoint_id for checkpoint_id in older if checkpoint_id not in protected]


def automatic_to_prune(entries: Iterable[dict], keep: int = KEEP_AUTOMATIC,
                       protected: Collection[str] = ()) -> list[str]:
    """Ids of automatic checkpoints to delete from `list_checkpoints()` entries (oldest first)."""
    automatic = [entry["id"] for entry in entries if state_of(entry) == CheckpointState.AUTO]
    return beyond_newest(automatic, keep, protected)
