"""Reverting an edit while no engine holds the model: in the run directory's newest checkpoint.

With no process holding the journal (owner.py) the model exists only in its checkpoints. The
revert then works on bytes: the newest checkpoint must hold what the edits left (every touched
tensor's hash equals the journal's hash after the edit); a new checkpoint is written with those
tensors replaced by their pre-edit content (the journal's blobs, verified on read), and the
journal records the revert naming both checkpoints. Restore the new checkpoint to use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from engine.edits.errors import JournalBusy, RevertFailed
from engine.edits.owner import owner_pid, release, take_ownership
from engine.edits.records import COMMITTED, REVERT, JournalDB, TensorChange
from engine.store.blobs import BlobFiles
from engine.store.manifests import TensorRecord, new_id
from engine.store.metadata import CheckpointState, checkpoint_metadata
from engine.store.store import CheckpointStore

CHECKPOINTS_DIR = "checkpoints"  # where the engine keeps a run's checkpoints


@dataclass
class RestingRevert:
    checkpoint_from: str
    checkpoint_to: str
    entries: list[int]  # the journal's revert entries, newest edit first
    edits: list[int]


def revert_in_checkpoint(run_dir: Path, edit_id: int, *, cascade: bool = False) -> RestingRevert:
    edits_dir = run_dir / "edits"
    fd = take_ownership(edits_dir)
    if fd is None:
        raise JournalBusy(f"process {owner_pid(edits_dir)} holds the model of {run_dir}; revert there "
                          "(ctx.journal.revert), not from the command line")
    db = JournalDB(edits_dir, create=False)
    try:
        plan = db.plan_revert(edit_id, cascade)
        store = CheckpointStore(run_dir / CHECKPOINTS_DIR)
        ids = store.list_ids()
        if not ids:
            raise RevertFailed(f"no engine holds the model and {run_dir / CHECKPOINTS_DIR} has no checkpoint "
                               "to revert in; nothing was changed.")
        manifests = sorted((store.read_manifest(i) for i in ids), key=lambda m: m.timestamp)
        newest = manifests[-1]
        records = {rec.name: rec for rec in newest.tensors}
        by_name = newest.by_name()
        pre_blobs = BlobFiles(edits_dir / "blobs", edits_dir / "tmp")
        entries = []
        for record in plan:
            for change in record.tensors:
                held = by_name.get(change.name)
                if held is None or held.hash != change.hash_after:
                    raise RevertFailed(
                        f"the newest checkpoint {newest.id} does not hold what edit {record.id} left in "
                        f"{change.name!r}; save a checkpoint with the engine after the edits, or revert in "
                        "the engine. Nothing was changed.")
                pre = TensorRecord(held.name, change.hash_before, change.dtype, tuple(change.shape), change.nbytes,
                                   held.aliases)
                if not store.has_blob(pre.hash, pre.dtype, pre.shape, pre.nbytes):
                    data = bytearray(pre.nbytes)
                    pre_blobs.read(pre, checkpoint_id=f"edit {record.id} (pre-edit content)", into=data)
                    store.write_blob(pre.hash, pre.dtype, pre.shape, data)
                records[held.name] = pre
                by_name.update({n: pre for n in pre.names})
        now = datetime.now(timezone.utc).astimezone()
        reverted = [r.id for r in plan]
        body = {
            "id": new_id(now), "created": now.isoformat(), "timestamp": now.timestamp(),
            "metadata": checkpoint_metadata(CheckpointState.MANUAL,
                                            f"{newest.id} with edit(s) {', '.join(map(str, reverted))} reverted",
                                            reverted_edits=reverted, reverted_from=newest.id),
            "model_class": newest.model_class, "model_type": newest.model_type,
            "tensors": [records[rec.name].to_json() for rec in newest.tensors],
            "num_tensors": len(newest.tensors), "size_bytes": newest.size_bytes,
            "new_bytes": sum(c.nbytes for r in plan for c in r.tensors),
        }
        store.commit(body, [c.hash_before for r in plan for c in r.tensors])
        for record in plan:
            changes = [TensorChange(c.name, c.dtype, c.shape, c.nbytes, c.hash_after, c.hash_before, None, None)
                       for c in record.tensors]
            entries.append(db.add(REVERT, f"revert edit {record.id}: {record.description}",
                                  {"reverts": record.id, "checkpoint_from": newest.id, "checkpoint": body["id"]},
                                  COMMITTED, [], {"verified": "checkpoint hashes match"}, changes,
                                  reverts=record.id))
        return RestingRevert(newest.id, body["id"], entries, reverted)
    finally:
        db.close()
        release(fd)
