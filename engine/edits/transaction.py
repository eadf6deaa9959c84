"""One edit as a transaction: `with journal.edit("...") as edit:`.

Entering pushes a write tracker (engine/store/write_tracker.py) and nothing else. The first
in-place write into a parameter's bytes copies that parameter (only it) to the host, before
the write runs. On leaving, the gate measures the touched tensors against their copies and
runs the probe (hashing what the edit left in the same pass); the edit then commits (pre-edit
blobs made durable, then the journal row, then the policy's checkpoint if it asks for one) or
every touched tensor is put back from its copy, bit for bit, and the journal records why.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from engine.edits import gate
from engine.edits.content import HostCopy, content_hash, content_hasher, copy_tensor, crash_point, write_back
from engine.edits.errors import EditRejected
from engine.edits.records import COMMITTED, EDIT, FAILED, REJECTED, TensorChange
from engine.store.write_tracker import WriteTracker


class Edit:
    """The handle of an edit in progress; after the block: `id`, `outcome`, `reasons`, `touched`,
    `checkpoint`.

    `journal` is the EditJournal that made it (not imported here: the journal imports this).
    """

    def __init__(self, journal: Any, description: str, meta: dict,
                 probe: Callable | None, probe_min: float):
        self.journal = journal
        self.description = str(description)
        self.meta = meta
        self.probe = probe
        self.probe_min = float(probe_min)
        self.id: int | None = None
        self.outcome: str | None = None
        self.reasons: list[str] = []
        self.checkpoint: str | None = None  # the checkpoint the policy asked for at commit
        self._copies: dict[int, HostCopy] = {}
        self._tracker: WriteTracker | None = None

    @property
    def touched(self) -> list[str]:
        """Names of the tensors the block wrote so far (tied groups under their first name)."""
        return [c.name for c in self._copies.values()]

    # -- the block ----------------------------------------------------------------------------

    def __enter__(self) -> Edit:
        self.journal._begin(self)
        self._tracker = WriteTracker(self.journal._index.owners, before=self._copy_on_write)
        self._tracker.__enter__()
        return self

    def _copy_on_write(self, hits: list[tuple[int, ...]]) -> None:
        for owners in hits:
            for i in owners:
                if i not in self._copies:
                    self._copies[i] = copy_tensor(self.journal._index.names[i], self.journal._index.tensors[i])

    def __exit__(self, exc_type, exc, tb) -> bool:
        tracker, self._tracker = self._tracker, None
        try:
            if tracker is not None:
                tracker.__exit__(None, None, None)
            if exc_type is not None:
                self._roll_back()
                self._record(FAILED, [f"{exc_type.__name__} inside the edit block: {exc}"], {}, {})
                return False
            try:
                self._decide()
            except EditRejected:
                raise
            except BaseException:  # the gate or the journal failed: the edit is not committed
                if self.outcome is None:
                    self._roll_back()
                raise
        finally:
            self.journal._end(self)
        return False

    # -- deciding -----------------------------------------------------------------------------

    def _decide(self) -> None:
        journal = self.journal
        tensors = journal._index.tensors
        rules = journal.gate_rules()
        magnitude = rules.baseline is not None
        checks, after = {}, {}
        for i, c in self._copies.items():
            live = tensors[i].detach()
            hasher = content_hasher(c, live)
            checks[c.name] = gate.measure(live, c.typed(live.device), magnitude=magnitude, hasher=hasher)
            after[i] = hasher.hexdigest() if hasher is not None else content_hash(c.name, live)
        verdict = gate.judge(checks, rules)
        if verdict.passed:
            gate.run_probe(verdict, self.probe, journal.model, self.probe_min)
        if not verdict.passed:
            self._roll_back()
            self._record(REJECTED, verdict.reasons, verdict.results, checks)
            raise EditRejected(self.description, verdict.reasons, self.id)
        journal._content.keep(list(self._copies.values()))  # write-ahead: pre-edit content durable first
        crash_point("pre_edit_durable")
        self._record(COMMITTED, [], verdict.results, checks, after)
        crash_point("committed")
        journal._after_commit(self, checks)

    def _roll_back(self) -> None:
        tensors = self.journal._index.tensors
        for i, copy in self._copies.items():
            write_back(tensors[i], copy)

    def _record(self, outcome: str, reasons: list[str], results: dict, checks: dict,
                after: dict[int, str] | None = None) -> None:
        changes = []
        for i, c in self._copies.items():
            check = checks.get(c.name)
            changes.append(TensorChange(
                c.name, c.dtype, c.shape, c.data.nbytes, c.digest, (after or {}).get(i),
                check.delta_norm if check else None, check.relative if check else None))
        results = {**results, "tensors": {name: {"finite": ch.finite} for name, ch in checks.items()}}
        self.outcome, self.reasons = outcome, list(reasons)
        self.id = self.journal._add(EDIT, self.description, self.meta, outcome, reasons, results, changes)
