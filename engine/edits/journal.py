"""EditJournal: every edit of a model as a transaction, on record, and revertible one by one.

    journal = EditJournal(model, run_dir)
    with journal.edit("move Paris to Rome", layer=5) as edit:
        w = model.model.layers[5].mlp.down_proj.weight
        w.add_(torch.outer(u, v))            # only this matrix is copied, before the write
    journal.list()                            # oldest first
    journal.revert(edit.id)                   # refused while later edits touched the same tensors
    journal.revert(edit.id, cascade=True)     # reverts those too, newest first

The journal lives in `<run_dir>/edits/` (records.py: SQLite; content.py: pre-edit blobs).
An edit returns once decided; a writer thread (writer.py) then hashes its content and writes
its pre-edit blobs and row, in order. Reading (list, show, plan), reverting and closing wait for
it (`flush()`); so does `edit(..., durable=True)`. One process at a time holds the journal
(owner.py); other processes read it. Parameters are indexed
when the journal opens: call `reindex()` after rebinding parameters (``load_state_dict(...,
assign=True)``, ``model.to(...)``); in-place writes (``copy_``) need nothing.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from pathlib import Path

import torch

from engine import policy
from engine.edits import gate
from engine.edits.gate import GateRules
from engine.edits.buffers import CopyBuffers
from engine.edits.content import PreEditContent, content_hash, write_back
from engine.edits.errors import JournalBusy, RevertFailed
from engine.edits.owner import release, take_ownership
from engine.edits.pending import PendingEntry, write_entry
from engine.edits.post_hashes import PostEditHashes
from engine.edits.probes import as_probe
from engine.edits.records import COMMITTED, REVERT, EditRecord, JournalDB, TensorChange
from engine.edits.transaction import Edit
from engine.edits.writer import JournalWriter
from engine.fsutil import secure_mkdir
from engine.store.identity import tie_groups
from engine.store.write_tracker import SpanOwners

log = logging.getLogger(__name__)

EDITS_DIR = "edits"
DEFAULT_HOLD_BYTES = 512 << 20  # host copies of recent pre-edit content kept for reverts without a file read
DEFAULT_PENDING_BYTES = 512 << 20  # copies waiting for the writer before an edit waits for it
SPARE_BYTES = 256 << 20  # buffers mapped ahead for the next edit's copies, at most


class ParameterIndex:
    """The model's parameters, one entry per distinct tensor (tied names under the first)."""

    def __init__(self, model: torch.nn.Module):
        groups = tie_groups(model.named_parameters(remove_duplicate=False))
        self.names = [names[0] for names, _t in groups]
        self.tensors = [t for _names, t in groups]
        self.by_name = {name: i for i, (names, _t) in enumerate(groups) for name in names}
        self.owners = SpanOwners(self.tensors).owners


class EditJournal:
    """The edit journal of one model in one run directory (see the module docstring)."""

    def __init__(self, model: torch.nn.Module, run_dir: str | Path, *, hold_bytes: int = DEFAULT_HOLD_BYTES,
                 pending_bytes: int = DEFAULT_PENDING_BYTES,
                 relative_change_limit: float | None = None, rules: GateRules | Callable[[], GateRules] | None = None,
                 tokenizer=None, checkpoint: Callable[[int, str], str] | None = None,
                 checkpoint_every: int = 0, checkpoint_above: float = 0.0):
        """`rules`: the gate's limits and baseline (engine/edits/gate.py), or a callable giving the
        current ones (the engine's policy); `relative_change_limit` overrides its edit limit.
        `tokenizer`: for prompt probes. `checkpoint(edit_id, reason) -> checkpoint id`: called
        after a commit when the "edit_checkpoint" policy asks (every `checkpoint_every` commits,
        or a tensor's ||dW||/||W|| >= `checkpoint_above`; 0 turns either off). `hold_bytes`: recent
        pre-edit copies kept in memory; `pending_bytes`: copies not yet written before an edit
        waits for the writer."""
        self.model = model
        self.run_dir = Path(run_dir).expanduser()
        self.dir = secure_mkdir(self.run_dir / EDITS_DIR)
        self.relative_change_limit = relative_change_limit
        self.rules = rules
        self.tokenizer = tokenizer
        self.checkpoint = checkpoint
        self.checkpoint_every, self.checkpoint_above = checkpoint_every, checkpoint_above
        self._commits_since_checkpoint = 0
        self._owner_fd = take_ownership(self.dir)
        if self._owner_fd is None:
            raise JournalBusy(f"another journal holds the model of {self.run_dir} (an engine or a script; "
                              "see `redline edits ls --run-dir ...`). Close it first, or use another run directory.")
        try:
            self._db = JournalDB(self.dir)
            self._buffers = CopyBuffers(SPARE_BYTES)
            self._content = PreEditContent(self.dir, hold_bytes, self._buffers)
            self._content.collect(self._db.preimage_hashes())
            self._next_id = self._db.next_id()
        except BaseException:
            release(self._owner_fd)
            raise
        self._index = ParameterIndex(model)
        self._active: Edit | None = None
        self._post = PostEditHashes()
        self._gate_scratch = gate.GateScratch()
        self._writer = JournalWriter(self._write_entry, PendingEntry.describe, pending_bytes)
        self.listeners: list[Callable[[EditRecord], None]] = []  # told of every entry written, from the writer thread

    def reindex(self) -> None:
        """Index the parameters again (after they were rebound to new tensors)."""
        self.flush()
        self._index = ParameterIndex(self.model)

    # -- edits --------------------------------------------------------------------------------

    def edit(self, description: str, *, probe=None, probe_min: float = 0.5, durable: bool = False, **meta) -> Edit:
        """A transaction around one edit: `with journal.edit("...", layer=3) as edit:`.

        probe: `probe(model) -> bool | float`, run on the edited model (a float passes when
        >= probe_min), or prompts with expected continuations, `[("The capital of France is",
        " Paris"), ...]` (engine/edits/probes.py: each must stay the model's top next token).
        Raises EditRejected (tensors put back) when a check fails. `durable`: return only once
        the edit is on disk (else the writer thread writes it while the caller goes on).
        """
        return Edit(self, description, meta, as_probe(probe, self.tokenizer), probe_min, durable)

    def gate_rules(self) -> GateRules:
        """The rules the gate applies now."""
        rules = self.rules() if callable(self.rules) else (self.rules or GateRules())
        if self.relative_change_limit is not None:
            rules = dataclasses.replace(rules, relative_limit=self.relative_change_limit)
        return rules

    def _after_commit(self, edit: Edit, checks: dict) -> None:
        """The policy's checkpoint at this commit, if it asks for one (recorded on the edit's row)."""
        self._commits_since_checkpoint += 1
        if self.checkpoint is None:
            return
        largest = max((c.relative for c in checks.values()), default=0.0)
        reason = policy.edit_checkpoint_reason(self._commits_since_checkpoint, largest,
                                               self.checkpoint_every, self.checkpoint_above)
        if not reason:
            return
        self.flush()  # the checkpoint holds this edit: its pre-edit content and row go first
        try:
            checkpoint_id = self.checkpoint(edit.id, reason)
        except Exception as exc:  # the edit is committed; the missing checkpoint is recorded on it
            log.warning("the checkpoint after edit %s failed: %s", edit.id, exc)
            self._db.set_checkpoint(edit.id, "", f"{reason}; the checkpoint FAILED: {type(exc).__name__}: {exc}")
            self._tell(edit.id)
            return
        self._commits_since_checkpoint = 0
        edit.checkpoint = checkpoint_id
        self._db.set_checkpoint(edit.id, checkpoint_id, reason)
        self._tell(edit.id)

    def _begin(self, edit: Edit) -> None:
        if self._owner_fd is None:
            raise RuntimeError("this EditJournal is closed")
        if self._active is not None:
            raise RuntimeError(f"edit {self._active.description!r} is still open; edits do not nest")
        self._writer.check()
        self._active = edit

    def _submit(self, entry: PendingEntry) -> int:
        """Give a decided edit its id and queue it for the writer; returns the id."""
        entry.id = self._next_id
        self._writer.submit(entry, entry.nbytes)
        self._next_id += 1
        return entry.id

    def _write_entry(self, entry: PendingEntry) -> None:
        """(The writer thread) one entry made durable, then the listeners told."""
        write_entry(entry, self._content, self._post, self._db)
        self._tell(entry.id)

    def _end(self, edit: Edit) -> None:
        if self._active is edit:
            self._active = None

    def _add(self, *args, **kwargs) -> int:
        """Write one journal entry now (JournalDB.add; the writer is flushed) and tell the listeners."""
        entry_id = self._db.add(*args, entry_id=self._next_id, **kwargs)
        self._next_id = entry_id + 1
        self._tell(entry_id)
        return entry_id

    def _tell(self, entry_id: int) -> None:
        """Tell the listeners about an entry; one that fails is logged (the entry is written)."""
        if not self.listeners:
            return
        record = self._db.show(entry_id)
        for listener in list(self.listeners):
            try:
                listener(record)
            except Exception:
                log.exception("an edit-journal listener failed on entry %s", entry_id)

    # -- reading ------------------------------------------------------------------------------

    def list(self) -> list[EditRecord]:
        """Every journal entry (edits and reverts), oldest first."""
        self.flush()
        return self._db.list()

    def show(self, edit_id: int) -> EditRecord:
        self.flush()
        return self._db.show(int(edit_id))

    # -- reverting ----------------------------------------------------------------------------

    def revert(self, edit_id: int, *, cascade: bool = False) -> list[int]:
        """Put back the tensors edit `edit_id` touched; returns the ids of the revert entries.

        Refused (RevertRefused, naming them) when later live edits touched the same tensors,
        unless `cascade`: then those are reverted first, newest first. Each tensor is checked
        to hold what the edit left before, and what it held before the edit after (hashes).
        """
        if self._active is not None:
            raise RuntimeError("revert inside an edit block: finish the edit first")
        self.flush()
        plan = self._db.plan_revert(int(edit_id), cascade)
        return [self._revert_one(r) for r in plan]

    def plan(self, edit_id: int) -> tuple[list[EditRecord], list[int]]:
        """What `revert(edit_id, cascade=True)` would undo (newest first) and which of those are
        later edits (a plain revert is refused when there are any). RevertRefused when not live."""
        self.flush()
        plan = self._db.plan_revert(int(edit_id), cascade=True)
        return plan, sorted(r.id for r in plan if r.id != int(edit_id))

    def _revert_one(self, record: EditRecord) -> int:
        live = {}
        for change in record.tensors:
            i = self._index.by_name.get(change.name)
            if i is None:
                raise RevertFailed(f"edit {record.id} touched {change.name!r}, which this model does not have; "
                                   "the model was not changed.")
            live[change.name] = self._index.tensors[i]
            if content_hash(change.name, live[change.name]) != change.hash_after:
                raise RevertFailed(
                    f"{change.name!r} no longer holds what edit {record.id} left (it was changed outside the "
                    "journal since, e.g. by a checkpoint restore); reverting would not give back the state "
                    "before the edit. The model was not changed.")
        try:
            before = {c.name: self._content.fetch(c, record.id) for c in record.tensors}
        except LookupError as exc:
            raise RevertFailed(f"the pre-edit content of edit {record.id} cannot be read: {exc} "
                               "The model was not changed.") from None
        changes = []
        for change in record.tensors:
            t, copy = live[change.name], before[change.name]
            check = gate.measure(copy.typed(t.device), t.detach(), scratch=self._gate_scratch)
            write_back(t, copy)
            if content_hash(change.name, t) != change.hash_before:
                raise RevertFailed(f"after reverting edit {record.id}, {change.name!r} does not hash to its "
                                   "recorded pre-edit content; check the machine's memory.")
            changes.append(TensorChange(change.name, change.dtype, change.shape, change.nbytes,
                                        change.hash_after, change.hash_before, check.delta_norm, check.relative))
        return self._add(REVERT, f"revert edit {record.id}: {record.description}", {"reverts": record.id},
                            COMMITTED, [], {"verified": "pre-edit hashes match"}, changes, reverts=record.id)

    # -- lifetime -----------------------------------------------------------------------------

    def flush(self) -> None:
        """Wait until every decided edit is on disk (pre-edit blobs, then its row). Raises
        JournalWriteFailed, naming the edit, when one cannot be written (after retrying it)."""
        self._writer.flush()

    @property
    def pending(self) -> int:
        """Decided edits not yet on disk."""
        return self._writer.pending

    def close(self) -> None:
        """Write what is queued and release the journal (another process may then hold it). Idempotent.
        Raises JournalWriteFailed when queued edits could not be written (they are then lost)."""
        if self._owner_fd is not None:
            try:
                self._writer.close()
            finally:
                self._post.clear()
                self._content.close()
                self._buffers.clear()
                self._db.close()
                release(self._owner_fd)
                self._owner_fd = None

    def __enter__(self) -> EditJournal:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.stop()
        fd = getattr(self, "_owner_fd", None)
        if fd is not None:
            release(fd)

