"""`ls` and `show`: the checkpoints of a store, and one checkpoint in full, including what it shares.

Sharing is by content: checkpoints reference tensor files by hash, so a tensor unchanged between
two saves is one file. `show` says which other checkpoints hold each of its tensors and how many
bytes only it holds (what `rm` would free).
"""

from __future__ import annotations

from collections import defaultdict

from engine.checkpoints_cli.output import emit, local_time, printable, table
from engine.checkpoints_cli.run_store import check_ids, read_manifest, readable_manifests
from engine.store.manifests import Manifest
from engine.store.store import CheckpointStore
from engine.units import human_bytes


def summary(m: Manifest) -> dict:
    meta = m.metadata if isinstance(m.metadata, dict) else {}
    return {"id": m.id, "created": m.created, "timestamp": m.timestamp, "state": meta.get("state"),
            "health": meta.get("health"), "purpose": meta.get("purpose"), "size_bytes": m.size_bytes,
            "new_bytes": m.new_bytes, "num_tensors": len(m.tensors), "model_class": m.model_class}


def list_command(store: CheckpointStore, as_json: bool) -> int:
    with store.lock(exclusive=False):
        manifests, damaged = readable_manifests(store)
        disk = store.disk_usage()
    data = {"checkpoint_dir": str(store.root), "checkpoints": [summary(m) for m in manifests],
            "damaged": [{"id": k, "error": v} for k, v in sorted(damaged.items())], "disk_bytes": disk}
    rows = [[m.id, local_time(m.timestamp), printable(s["state"] or "", 10), printable(s["health"] or "", 8),
             human_bytes(m.size_bytes), human_bytes(m.new_bytes), printable(s["purpose"] or "")]
            for m, s in zip(manifests, data["checkpoints"])]
    lines = [f"{len(manifests)} checkpoint{'' if len(manifests) == 1 else 's'} in {store.root} ({human_bytes(disk)} on disk)"]
    if rows:
        lines.append(table(["ID", "SAVED", "STATE", "HEALTH", "SIZE", "WRITTEN", "PURPOSE"], rows, right={4, 5}))
    for checkpoint_id, error in sorted(damaged.items()):
        lines.append(f"DAMAGED {checkpoint_id}: {error}")
    emit(as_json, data, "\n".join(lines))
    return 0


def show_command(store: CheckpointStore, checkpoint_id: str, as_json: bool) -> int:
    check_ids(store, [checkpoint_id])
    with store.lock(exclusive=False):
        m = read_manifest(store, checkpoint_id)
        others, _damaged = readable_manifests(store)
    holders: dict[str, set[str]] = defaultdict(set)
    for other in others:
        if other.id != m.id:
            for rec in other.tensors:
                holders[rec.hash].add(other.id)
    shared_with: dict[str, int] = defaultdict(int)
    only_here = 0
    for rec in {r.hash: r for r in m.tensors}.values():
        for other_id in holders[rec.hash]:
            shared_with[other_id] += rec.nbytes
        if not holders[rec.hash]:
            only_here += rec.nbytes
    tensors = [{"name": r.name, "aliases": list(r.aliases), "dtype": r.dtype, "shape": list(r.shape),
                "nbytes": r.nbytes, "hash": r.hash, "shared_with": len(holders[r.hash])} for r in m.tensors]
    data = {**summary(m), "metadata": m.metadata, "model_type": m.model_type, "tensors": tensors,
            "unique_bytes": only_here,
            "shares": [{"id": k, "bytes": v} for k, v in sorted(shared_with.items(), key=lambda kv: -kv[1])]}
    emit(as_json, data, _show_text(m, data))
    return 0


def _show_text(m: Manifest, data: dict) -> str:
    meta = m.metadata if isinstance(m.metadata, dict) else {}
    lines = [f"{m.id}  saved {local_time(m.timestamp)}  ({m.model_class or 'unknown model'}"
             f"{', ' + m.model_type if m.model_type else ''})",
             f"  state {printable(data['state'] or '-')}, health at save {printable(data['health'] or '-')}, "
             f"purpose {printable(data['purpose'] or '-')}"]
    extra = {k: v for k, v in meta.items() if k not in ("state", "health", "purpose", "tags")}
    for key, value in sorted(extra.items()):
        lines.append(f"  {printable(key, 30)}: {printable(value)}")
    lines.append(f"  {len(m.tensors)} tensors, {human_bytes(m.size_bytes)}; its save wrote "
                 f"{human_bytes(m.new_bytes)}; {human_bytes(data['unique_bytes'])} are in no other checkpoint")
    for share in data["shares"][:10]:
        lines.append(f"  shares {human_bytes(share['bytes'])} with {share['id']}")
    if len(data["shares"]) > 10:
        lines.append(f"  ... and {len(data['shares']) - 10} more checkpoints")
    rows = [[t["name"] + (f" (= {', '.join(t['aliases'])})" if t["aliases"] else ""), t["dtype"],
             "x".join(map(str, t["shape"])) or "scalar", human_bytes(t["nbytes"]), t["hash"][:12],
             str(t["shared_with"])] for t in data["tensors"]]
    lines.append(table(["TENSOR", "DTYPE", "SHAPE", "SIZE", "HASH", "SHARED"], rows, right={3, 5}))
    return "\n".join(lines)
