"""`verify`: re-hash every tensor file of the chosen checkpoints and name everything damaged.

Each distinct tensor file is read and hashed once (checkpoints share files), then its verdict
is given to every chosen checkpoint that references it, with the tensor's names there. The
store's shared lock is held one checkpoint at a time, so an engine deleting or pruning in the
same directory waits for at most one checkpoint's files, never for the whole run.
"""

from __future__ import annotations

from engine.checkpoints_cli.failures import EXIT_DAMAGED, EXIT_OK
from engine.checkpoints_cli.output import emit
from engine.checkpoints_cli.progress import ProgressBar
from engine.checkpoints_cli.run_store import check_ids
from engine.store.errors import CheckpointCorrupted, CheckpointNotFound
from engine.store.manifests import TensorRecord
from engine.store.store import CheckpointStore
from engine.store.workers import run_all
from engine.units import human_bytes


def verify_command(store: CheckpointStore, ids: list[str], as_json: bool) -> int:
    chosen = check_ids(store, ids) if ids else sorted(store.list_ids())
    manifests, reports = {}, {}
    for checkpoint_id in chosen:
        try:
            manifests[checkpoint_id] = store.read_manifest(checkpoint_id)
        except CheckpointNotFound:
            reports[checkpoint_id] = {"id": checkpoint_id, "ok": None, "note": "deleted while verifying"}
        except CheckpointCorrupted as exc:
            reports[checkpoint_id] = {"id": checkpoint_id, "ok": False, "manifest_error": str(exc), "damaged": []}
    total = sum(r.nbytes for r in {r.hash: r for m in manifests.values() for r in m.tensors}.values())
    verdicts: dict[str, str | None] = {}  # hash -> None (intact) or what is wrong
    with ProgressBar(total, "verifying") as bar:
        for checkpoint_id, manifest in manifests.items():
            with store.lock(exclusive=False):
                if checkpoint_id not in store.list_ids():
                    reports[checkpoint_id] = {"id": checkpoint_id, "ok": None, "note": "deleted while verifying"}
                    continue
                todo = [r for r in {r.hash: r for r in manifest.tensors}.values() if r.hash not in verdicts]

                def check(rec: TensorRecord, checkpoint_id=checkpoint_id) -> tuple[str, str | None]:
                    try:
                        store.read_blob(rec, checkpoint_id=checkpoint_id)
                        return rec.hash, None
                    except CheckpointCorrupted as exc:
                        return rec.hash, str(exc)
                    finally:
                        bar.advance(rec.nbytes)

                verdicts.update(run_all(check, todo))
            damaged = [{"tensor": r.name, "aliases": list(r.aliases), "hash": r.hash, "error": verdicts[r.hash]}
                       for r in manifest.tensors if verdicts.get(r.hash)]
            reports[checkpoint_id] = {"id": checkpoint_id, "ok": not damaged, "tensors": len(manifest.tensors),
                                      "bytes": manifest.size_bytes, "damaged": damaged}
    ordered = [reports[c] for c in chosen]
    bad = [r for r in ordered if r["ok"] is False]
    data = {"checkpoint_dir": str(store.root), "ok": not bad, "checked": len(ordered),
            "damaged": [r["id"] for r in bad], "checkpoints": ordered}
    emit(as_json, data, _text(ordered, bad, total))
    return EXIT_DAMAGED if bad else EXIT_OK


def _text(reports: list[dict], bad: list[dict], total: int) -> str:
    lines = []
    for r in reports:
        if r["ok"] is None:
            lines.append(f"{r['id']}  skipped: {r['note']}")
        elif r["ok"]:
            lines.append(f"{r['id']}  ok ({r['tensors']} tensors, {human_bytes(r['bytes'])})")
        elif "manifest_error" in r:
            lines.append(f"{r['id']}  DAMAGED: {r['manifest_error']}")
        else:
            lines.append(f"{r['id']}  DAMAGED: {len(r['damaged'])} of {r['tensors']} tensors")
            for d in r["damaged"]:
                lines.append(f"    {d['tensor']}: {d['error']}")
    if bad:
        lines.append(f"{len(bad)} of {len(reports)} checkpoints DAMAGED: {', '.join(r['id'] for r in bad)}")
    else:
        lines.append(f"all {len(reports)} checkpoints intact ({human_bytes(total)} re-hashed)")
    return "\n".join(lines)
