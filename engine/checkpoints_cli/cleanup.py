"""`gc` and `rm`: free disk space without ever removing a file a checkpoint, or a save in progress, needs.

Both work under the store's exclusive lock: every save (in any process) holds the shared lock
from its first tensor file to its manifest, so while gc or rm hold it no save is between the
two, and "referenced by a manifest" is the whole truth. gc removes tensor files no manifest
references (a save that crashed before its manifest) and the temp files of crashed writes;
by default it only says what it would remove. While any manifest is damaged no tensor file is
removed: which files it needs cannot be known (the store's own rule). The scan and the removal
happen under one hold of the lock, so what is removed is exactly what was found.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from engine.checkpoints_cli.failures import EXIT_DAMAGED, EXIT_FAILED, CommandFailed
from engine.checkpoints_cli.output import emit
from engine.checkpoints_cli.run_store import check_ids, readable_manifests
from engine.store.errors import CheckpointError
from engine.store.store import CheckpointStore
from engine.units import human_bytes


@dataclass
class Garbage:
    """What gc would remove, found under the exclusive lock."""

    blobs: list[tuple[Path, int]] = field(default_factory=list)
    leftovers: list[tuple[Path, int]] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # manifests that keep every blob

    @property
    def blob_bytes(self) -> int:
        return sum(size for _path, size in self.blobs)


def find_garbage(store: CheckpointStore) -> Garbage:
    """Caller holds the exclusive lock."""
    manifests, damaged = readable_manifests(store)
    referenced = {r.hash for m in manifests for r in m.tensors}
    garbage = Garbage(damaged=damaged)
    garbage.blobs = [(p, s) for p, s in _files(store.blob_dir, depth=2)
                     if p.name.removesuffix(".safetensors") not in referenced]
    garbage.leftovers = _files(store.tmp_dir, depth=1)
    return garbage


def _files(directory: Path, depth: int) -> list[tuple[Path, int]]:
    found = []
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                if depth > 1:
                    found += _files(Path(entry.path), depth - 1)
            else:
                found.append((Path(entry.path), entry.stat(follow_symlinks=False).st_size))
        except FileNotFoundError:
            continue
    return sorted(found)


def gc_command(store: CheckpointStore, act: bool, as_json: bool) -> int:
    freed = removed_leftovers = 0
    try:
        with store.lock(exclusive=True):  # no save runs anywhere while we hold it
            garbage = find_garbage(store)
            if act:
                for path, size in [] if garbage.damaged else garbage.blobs:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        freed += size
                for path, _size in garbage.leftovers:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                        removed_leftovers += 1
    except (CheckpointError, OSError) as exc:
        raise CommandFailed(f"gc could not finish in {store.root}: {exc}", EXIT_FAILED) from None
    data = {"checkpoint_dir": str(store.root), "dry_run": not act,
            "unreferenced_blobs": [{"path": str(p), "bytes": s} for p, s in garbage.blobs],
            "leftovers": [{"path": str(p), "bytes": s} for p, s in garbage.leftovers],
            "blocked_by_damaged": sorted(garbage.damaged), "freed_bytes": freed,
            "removed_leftovers": removed_leftovers}
    emit(as_json, data, _gc_text(garbage, act, freed, removed_leftovers))
    return EXIT_DAMAGED if garbage.damaged else 0


def _gc_text(garbage: Garbage, act: bool, freed: int, removed_leftovers: int) -> str:
    blob_verb = "removed" if act and not garbage.damaged else ("kept" if act else "would remove")
    lines = [f"{blob_verb}  {human_bytes(size):>10}  {path}" for path, size in garbage.blobs]
    lines += [f"{'removed' if act else 'would remove'}  {human_bytes(size):>10}  {path}"
              for path, size in garbage.leftovers]
    if garbage.damaged:
        lines.append(f"kept every tensor file: {len(garbage.damaged)} manifests are damaged "
                     f"({', '.join(sorted(garbage.damaged))}), so which files they need cannot be known. "
                     "Remove them with `redline checkpoints rm ID`, then run gc again")
    if not garbage.blobs and not garbage.leftovers:
        lines.append("nothing to remove: every tensor file is referenced and no crash leftovers remain")
    elif act:
        lines.append(f"freed {human_bytes(freed)} of unreferenced tensor files; removed {removed_leftovers} "
                     "crash leftovers")
    else:
        lines.append(f"dry run: {len(garbage.blobs)} unreferenced tensor files ({human_bytes(garbage.blob_bytes)}) "
                     f"and {len(garbage.leftovers)} crash leftovers would be removed; `gc --yes` removes them")
    return "\n".join(lines)


def rm_command(store: CheckpointStore, ids: list[str], as_json: bool) -> int:
    ids = check_ids(store, ids)
    results = []
    for checkpoint_id in ids:
        try:
            before = _blob_bytes(store)
            deleted = store.delete(checkpoint_id)
            freed = max(0, before - _blob_bytes(store))
        except (CheckpointError, OSError) as exc:
            raise CommandFailed(f"could not delete {checkpoint_id}: {exc}", EXIT_FAILED) from None
        results.append({"id": checkpoint_id, "deleted": deleted, "freed_bytes": freed})
    lines = [f"{'deleted' if r['deleted'] else 'already gone:'} {r['id']} (freed {human_bytes(r['freed_bytes'])})"
             for r in results]
    emit(as_json, {"checkpoint_dir": str(store.root), "removed": results}, "\n".join(lines))
    return 0


def _blob_bytes(store: CheckpointStore) -> int:
    return sum(size for _path, size in _files(store.blob_dir, depth=2))
