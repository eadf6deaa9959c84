"""One edit as a transaction: `with journal.edit("...") as edit:`.

Entering pushes a write tracker (engine/store/write_tracker.py) and nothing else. The first
in-place write into a parameter's bytes copies that parameter (only it) to the host, before
the write runs (into a buffer mapped ahead of time: engine/edits/buffers.py). On leaving, the
gate measures the touched tensors against their copies in one pass and runs the probe; the
edit then commits or every touched tensor is put back from its copy, bit for bit. Either way
the decided entry goes to the journal's writer thread (engine/edits/writer.py), which hashes
the content, writes the pre-edit blobs and then the row (write-ahead), while the caller goes
on; `durable=True` waits for it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from engine.edits import gate
from engine.edits.content import HostCopy, copy_tensor, write_back
from engine.edits.errors import EditRejected
from engine.edits.pending import PendingEntry
from engine.edits.records import COMMITTED, FAILED, REJECTED
from engine.store.write_tracker import WriteTracker


class Edit:
    """The handle of an edit in progress; after the block: `id`, `outcome`, `reasons`, `touched`,
    `checkpoint`.

    `journal` is the EditJournal that made it (not imported here: the journal imports this).
    """

    def __init__(self, journal: Any, description: str, meta: dict,
                 probe: Callable | None, probe_min: float, durable: bool = False):
        self.journal = journal
        self.description = str(description)
        self.meta = meta
        self.probe = probe
        self.probe_min = float(probe_min)
        self.durable = durable
        self.id: int | None = None
        self.outcome: str | None = None
        self.reasons: list[str] = []
        self.checkpoint: str | None = None  # the checkpoint the policy asked for at commit
        self._copies: dict[int, HostCopy] = {}
        self._touched: list[str] = []
        self._tracker: WriteTracker | None = None

    @property
    def touched(self) -> list[str]:
        """Names of the tensors the block wrote so far (tied groups under their first name)."""
        return self._touched or [c.name for c in self._copies.values()]

    # -- the block ----------------------------------------------------------------------------

    def __enter__(self) -> Edit:
        self.journal._begin(self)
        self._tracker = WriteTracker(self.journal._index.owners, before=self._copy_on_write)
        self._tracker.__enter__()
        return self

    def _copy_on_write(self, hits: list[tuple[int, ...]]) -> None:
        journal = self.journal
        for owners in hits:
            for i in owners:
                if i not in self._copies:
                    copy = copy_tensor(journal._index.names[i], journal._index.tensors[i], journal._buffers)
                    self._copies[i] = copy
                    journal._post.before_write(i, copy)  # an earlier edit's post-edit content, if it waits

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
        checks = {}
        for i, c in self._copies.items():
            live = tensors[i].detach()
            checks[c.name] = gate.measure(live, c.typed(live.device), magnitude=magnitude,
                                          scratch=journal._gate_scratch)
        verdict = gate.judge(checks, rules)
        if verdict.passed:
            gate.run_probe(verdict, self.probe, journal.model, self.probe_min)
        if not verdict.passed:
            self._roll_back()
            self._record(REJECTED, verdict.reasons, verdict.results, checks)
            raise EditRejected(self.description, verdict.reasons, self.id)
        self._record(COMMITTED, [], verdict.results, checks)
        journal._after_commit(self, checks)
        if self.durable:
            journal.flush()

    def _roll_back(self) -> None:
        tensors = self.journal._index.tensors
        for i, copy in self._copies.items():
            write_back(tensors[i], copy)

    def _record(self, outcome: str, reasons: list[str], results: dict, checks: dict) -> None:
        """Hand the decided entry to the journal's writer (a committed edit with its post-edit slots)."""
        journal = self.journal
        results = {**results, "tensors": {name: {"finite": ch.finite} for name, ch in checks.items()}}
        after = None
        if outcome == COMMITTED:
            after = [journal._post.expect(i, c.name, journal._index.tensors[i]) for i, c in self._copies.items()]
        entry = PendingEntry(0, self.description, self.meta, outcome, list(reasons), results,
                             list(self._copies.values()), checks, time.time(), after)
        self.id = journal._submit(entry)
        self.outcome, self.reasons = outcome, list(reasons)
        self._touched = [c.name for c in self._copies.values()]
        self._copies = {}  # the writer owns the copies now (their buffers are reused once written)
