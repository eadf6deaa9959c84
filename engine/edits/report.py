"""Journal entries as the engine's events (engine.events.EditInfo), for the console. Imports no torch."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

from engine.edits.records import DB_NAME, EditRecord, JournalDB
from engine.events import EditInfo, EditRecorded, EditTensorInfo

log = logging.getLogger(__name__)

RECENT_EDITS = 200  # entries a console is sent at start (the journal keeps every one)


def _gate_line(gate: dict) -> str:
    parts = []
    if "relative_change_limit" in gate:
        parts.append(f"||dW||/||W|| <= {gate['relative_change_limit']:g}")
    if "baseline_rule" in gate:
        parts.append(str(gate["baseline_rule"]))
    if "probe" in gate:
        parts.append(f"probe {gate['probe']}")
    if "checkpoint_reason" in gate:
        parts.append(f"checkpoint: {gate['checkpoint_reason']}")
    if "verified" in gate:
        parts.append(str(gate["verified"]))
    return "; ".join(parts)


def edit_info(record: EditRecord) -> EditInfo:
    """One journal entry as the console shows it."""
    gate = record.gate
    return EditInfo(
        id=record.id, entry=record.kind, description=record.description, outcome=record.outcome,
        created=record.time,
        tensors=tuple(EditTensorInfo(t.name, t.delta_norm, t.relative) for t in record.tensors),
        reasons=tuple(record.reasons), gate=_gate_line(gate), reverts=record.reverts,
        reverted_by=record.reverted_by, checkpoint=str(gate.get("checkpoint") or ""))


def recent_edits(run_dir: Path, limit: int = RECENT_EDITS) -> list[EditRecorded]:
    """The last `limit` entries of a run directory's journal, oldest first; none when it has no journal."""
    edits_dir = Path(run_dir) / "edits"
    if not (edits_dir / DB_NAME).exists():
        return []
    try:
        db = JournalDB(edits_dir, create=False)
    except (OSError, sqlite3.Error) as exc:
        log.warning("could not read the edit journal in %s: %s", edits_dir, exc)
        return []
    try:
        return [EditRecorded(edit=edit_info(r)) for r in db.list_recent(limit)]
    finally:
        db.close()
