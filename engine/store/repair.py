"""Checking one checkpoint's files on disk and repairing them from verified bytes held in memory.

After a restore served from the host-memory copy no file was read, so damage to them would
go unnoticed until a restore from disk needs them. Files whose bytes are held (by hash) are
compared with them and rewritten when they differ or are missing; the others are verified
by their checksum and, when damaged, reported as beyond repair here.
"""

from __future__ import annotations

from engine.store.errors import CheckpointCorrupted
from engine.store.interface import CheckpointStorage
from engine.store.manifests import Manifest, TensorRecord
from engine.store.tensors import numpy_bytes
from engine.store.workers import run_all


def check_and_repair(store: CheckpointStorage, manifest: Manifest, held: dict) -> dict:
    """Check every distinct tensor file of `manifest`; `held` maps hashes to verified host bytes.

    Returns {checkpoint_id, checked, repaired: [{tensor, hash, why}], damaged: [{tensor, hash, error}]}.
    """
    readonly = getattr(store, "readonly", False)

    def check(rec: TensorRecord):
        if rec.hash in held and not readonly:
            found = store.put_blob(rec.hash, rec.dtype, rec.shape, numpy_bytes(held[rec.hash]), recheck=True)
            return rec, {"same": None, "absent": "it was missing"}.get(found.state, found.why), None
        try:
            store.read_blob(rec, checkpoint_id=manifest.id)
        except CheckpointCorrupted as exc:
            return rec, None, str(exc)
        return rec, None, None

    unique = list({r.hash: r for r in manifest.tensors}.values())
    if readonly:
        results = run_all(check, unique)
    else:
        with store.saving():  # a collection elsewhere waits: the rewritten files are referenced
            results = run_all(check, unique)
    return {
        "checkpoint_id": manifest.id,
        "checked": len(unique),
        "repaired": [{"tensor": r.name, "hash": r.hash, "why": why} for r, why, _e in results if why],
        "damaged": [{"tensor": r.name, "hash": r.hash, "error": err} for r, _w, err in results if err],
    }
