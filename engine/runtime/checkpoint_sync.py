"""Keeping clients' view of the checkpoints in step with the directory.

`CheckpointSync` publishes every checkpoint change: the engine's own saves,
restores and deletions, automatic pruning (engine.store.pruning), and
checkpoints other processes write into the same run directory, which a
watchdog observer notices (or, without one, the periodic health scan).
It also turns the store's integrity findings into alerts: damaged tensor files
a save rewrote, a restore refused for a damaged file, and the check of a
checkpoint's files after a restore served from host memory (which reads no
disk), done at the next save or idle health scan, repairing from memory.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

from engine.events import CheckpointDeleted, CheckpointInfo, CheckpointList, CheckpointRestored, CheckpointSaved
from engine.runtime.run_dir_watch import RunDirWatcher
from engine.store.pruning import KEEP_AUTOMATIC, automatic_to_prune


def checkpoint_info(entry: dict) -> CheckpointInfo:
    """A `list_checkpoints()` entry as clients see it."""
    metadata = entry.get("metadata") or {}
    tags = metadata.get("tags") or ()
    return CheckpointInfo(
        id=entry["id"],
        created=float(entry.get("timestamp") or 0.0),
        purpose=str(metadata.get("purpose", "")),
        state=str(metadata.get("state", "")),
        size_bytes=int(entry.get("size_bytes") or 0),
        verified=entry.get("verified"),
        health=str(metadata.get("health", "")),
        tags=tuple(str(t) for t in tags) if isinstance(tags, (list, tuple)) else (str(tags),),
        metadata_json=json.dumps(metadata, ensure_ascii=False, sort_keys=True, default=str),
    )


class CheckpointSync:
    """The engine's checkpoint operations and the published list; runs in the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore: its checkpoint manager, command queue, publish() and alert()
        self.known: tuple[str, ...] = ()  # ids in the last published list
        self.dirty = False  # set (from the observer thread) when the directory changed
        self.watcher: RunDirWatcher | None = None
        self._list_held = 0  # inside list_after(): publish_list only notes that a list is due
        self._list_due = False

    # -- the engine's own changes ------------------------------------------------------------
    def flush_edits(self, doing: str) -> None:
        """Wait for the edit journal's writer; one that cannot write is reported, never a reason
        to refuse a save or a restore (the model's safety comes first)."""
        journal = self._core.journal
        if journal is None:
            return
        from engine.edits.errors import JournalWriteFailed

        try:
            journal.flush()
        except JournalWriteFailed as exc:
            self._core.alert("HIGH", f"{doing} a checkpoint with edits not on record: {exc}")

    def save(self, metadata: dict, *, hold: bool) -> str:
        """Save the model with `metadata` (plus experiment and step), publish it; hold it in memory if asked."""
        core = self._core
        metadata = {**metadata, "experiment": core.experiment_name, "step": core.step}
        self.flush_edits("saving")  # edits the checkpoint holds are on record first (pre-edit content, row)
        self.check_disk_copies()
        started = time.perf_counter()
        checkpoint_id = core.checkpoints.save_checkpoint(metadata=metadata)
        seconds = time.perf_counter() - started
        for repair in getattr(core.checkpoints, "repairs", ()):
            core.alert("HIGH", f"Checkpoint file of {repair['tensor']} was damaged on disk ({repair['why']}); "
                               f"saving {checkpoint_id} rewrote it from the live model. Check the disk.")
        if hold:
            core.checkpoints.hold_in_memory(checkpoint_id)
        core.publish(CheckpointSaved(checkpoint=checkpoint_info(core.checkpoints.get_checkpoint(checkpoint_id)),
                                     seconds=seconds))
        self.publish_list()
        return checkpoint_id

    def restore(self, checkpoint_id: str) -> bool:
        """Restore one checkpoint, publishing progress and the result."""
        core = self._core
        self.flush_edits("restoring")  # pending edits hashed as they left the model, before it is overwritten
        report = core.progress_callback("restore")
        report(0, 1, f"restoring {checkpoint_id}")
        started = time.perf_counter()
        ok = core.checkpoints.restore_checkpoint(checkpoint_id)
        seconds = time.perf_counter() - started
        report(1, 1, "restored" if ok else "restore failed")
        core.publish(CheckpointRestored(checkpoint_id=checkpoint_id, ok=ok, seconds=seconds,
                                        message="" if ok else (core.checkpoints.last_error or "restore failed")))
        if not ok and "is damaged" in (core.checkpoints.last_error or ""):
            core.alert("HIGH", f"Restore refused: {core.checkpoints.last_error}")
        if ok:
            core.health.perplexity_status = "OK"
            core.health.last_perplexity = None
            core.detection.after_restore(checkpoint_id)
        return ok

    def check_disk_copies(self) -> None:
        """Check (and repair from host memory) the files of checkpoints last restored from memory."""
        checkpoints = self._core.checkpoints
        for checkpoint_id in sorted(getattr(checkpoints, "disk_unchecked", ())):
            try:
                report = checkpoints.check_and_repair(checkpoint_id)
            except Exception as exc:
                checkpoints.disk_unchecked.discard(checkpoint_id)
                self._core.alert("MEDIUM", f"Could not check the files of {checkpoint_id}: {type(exc).__name__}: {exc}")
                continue
            for repair in report["repaired"]:
                self._core.alert("HIGH", f"Checkpoint {checkpoint_id}: the file of {repair['tensor']} was damaged on "
                                         f"disk ({repair['why']}); rewritten from the copy in host memory. Check the disk.")
            for damage in report["damaged"]:
                self._core.alert("HIGH", f"Checkpoint {checkpoint_id} cannot be restored from disk: {damage['error']}")

    def delete(self, checkpoint_id: str) -> bool:
        ok = self._core.checkpoints.delete_checkpoint(checkpoint_id)
        if ok:
            self._core.publish(CheckpointDeleted(checkpoint_id=checkpoint_id))
            self.publish_list()
        return ok

    def prune_automatic(self) -> None:
        """Delete automatic checkpoints beyond the newest KEEP_AUTOMATIC (never the one held in memory)."""
        checkpoints = self._core.checkpoints
        held = getattr(checkpoints, "memory_snapshot_id", None)
        for checkpoint_id in automatic_to_prune(checkpoints.list_checkpoints(), KEEP_AUTOMATIC,
                                                protected={held} if held else ()):
            if checkpoints.delete_checkpoint(checkpoint_id):
                self._core.publish(CheckpointDeleted(checkpoint_id=checkpoint_id))

    @contextlib.contextmanager
    def list_after(self) -> Iterator[None]:
        """Lists published inside go out once, at the end: a command's answer goes out first, and reading
        every manifest and the store's size (milliseconds, more with each checkpoint) is not on its way."""
        self._list_held += 1
        try:
            yield
        finally:
            self._list_held -= 1
            if not self._list_held and self._list_due:
                self.publish_list()

    def publish_list(self, entries: list[dict] | None = None) -> None:
        checkpoints = self._core.checkpoints
        if checkpoints is None:
            return
        if self._list_held:
            self._list_due = True
            return
        self._list_due = False
        if entries is None:
            entries = checkpoints.list_checkpoints()
        self.known = tuple(e["id"] for e in entries)
        self._core.publish(CheckpointList(checkpoints=tuple(checkpoint_info(e) for e in entries),
                                          disk_usage=int(checkpoints.get_disk_usage())))

    # -- other processes' changes --------------------------------------------------------------
    def watch(self) -> None:
        """Start watching the checkpoint directory; a LOW alert when it cannot be watched."""
        checkpoints = self._core.checkpoints
        if checkpoints is None:
            return
        self.watcher = RunDirWatcher(checkpoints.watch_path, self.notice_change)
        if not self.watcher.start():
            self._core.alert("LOW", f"Not watching {checkpoints.watch_path} for other processes' checkpoints; "
                                    "they will show up at the next health scan instead")

    def stop_watching(self) -> None:
        if self.watcher is not None:
            self.watcher.stop()

    def notice_change(self) -> None:
        """Called from the watchdog thread: only a flag and a wake-up."""
        if not self.dirty:
            self.dirty = True
            self._core.commands.put(None)

    def poll_if_unwatched(self) -> None:
        """Without a running watcher, re-list at the next chance (called at each periodic health scan)."""
        if self.watcher is None or not self.watcher.running:
            self.dirty = self._core.checkpoints is not None

    def sync(self) -> None:
        """Re-list after a change on disk; publish what other processes added or removed."""
        self.dirty = False
        checkpoints = self._core.checkpoints
        if checkpoints is None:
            return
        entries = checkpoints.list_checkpoints()
        ids = tuple(e["id"] for e in entries)
        if ids == self.known:
            return
        before = set(self.known)
        self.publish_list(entries)  # the list first: a client that sees the news also has the list
        for entry in entries:
            if entry["id"] not in before:
                self._core.publish(CheckpointSaved(checkpoint=checkpoint_info(entry), origin="external"))
        for gone in before - set(ids):
            self._core.publish(CheckpointDeleted(checkpoint_id=gone, origin="external"))
