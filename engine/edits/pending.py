"""A decided edit waiting for the journal's writer, and how the writer makes it durable.

The editing thread decides (gate, roll back or not) and builds a PendingEntry; the writer
thread (engine/edits/writer.py) then, in order: hashes the pre-edit copies, hashes what a
committed edit left (engine/edits/post_hashes.py), writes and fsyncs the pre-edit blobs, and
only then inserts the row (write-ahead). Writing is idempotent, so the writer can retry an
entry after a failure.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from engine.edits.content import HostCopy, PreEditContent, crash_point, hash_copy
from engine.edits.post_hashes import AfterSlot, PostEditHashes
from engine.edits.records import EDIT, JournalDB, TensorChange


@dataclass
class PendingEntry:
    """One edit's journal entry before it is written: `after` is set for a committed edit."""

    id: int
    description: str
    meta: dict
    outcome: str
    reasons: list[str]
    results: dict
    copies: list[HostCopy]
    checks: dict  # name -> gate.TensorCheck
    created: float
    after: list[AfterSlot] | None = None
    written: bool = field(default=False)

    @property
    def nbytes(self) -> int:
        return sum(c.data.nbytes for c in self.copies)

    def describe(self) -> str:
        return f"edit {self.id} ({self.description!r}, {self.outcome})"

    def changes(self, hashes_after: list[str | None]) -> list[TensorChange]:
        out = []
        for copy, after in zip(self.copies, hashes_after):
            check = self.checks.get(copy.name)
            out.append(TensorChange(copy.name, copy.dtype, copy.shape, copy.data.nbytes, copy.digest, after,
                                    check.delta_norm if check else None, check.relative if check else None))
        return out


def write_entry(entry: PendingEntry, content: PreEditContent, post: PostEditHashes, db: JournalDB) -> None:
    """Make one entry durable (on the writer thread); see the module docstring."""
    crash_point("queued")
    if entry.after is not None and content.buffers is not None:
        # the next edit likely copies tensors of these sizes: map its buffers now, on this thread
        content.buffers.prepare(Counter(copy.data.nbytes for copy in entry.copies if not copy.data.is_pinned()))
    for copy in entry.copies:
        hash_copy(copy)
    if entry.after is not None:
        hashes_after = [post.resolve(slot) for slot in entry.after]
        content.keep(entry.copies)  # write-ahead: the pre-edit content is durable before the row
        crash_point("pre_edit_durable")
    else:
        hashes_after = [None] * len(entry.copies)
    if not entry.written:
        db.add(EDIT, entry.description, entry.meta, entry.outcome, entry.reasons, entry.results,
               entry.changes(hashes_after), entry_id=entry.id, created=entry.created)
        entry.written = True
    crash_point("committed")
    if entry.after is not None:
        content.hold(entry.copies)
    else:
        content.release(entry.copies)  # a rolled-back edit's copies are not needed any more
