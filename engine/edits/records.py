"""The edit journal on disk: one SQLite database (WAL) in `<run_dir>/edits/`. Imports no torch.

One row per edit (and per revert, kind "revert"), with one row per tensor it touched: the
content hashes before and after (blake3, as the checkpoint store names blobs), ||dW|| and
||dW||/||W||. A row is written in one transaction after the edit has been decided (by the
journal's writer thread, with the id the journal gave the edit then), so a process killed in
the middle of an edit, or before the writer got to it, leaves no row. Readers (the CLI, the console, other
processes) open the same file; WAL lets them read while the engine writes.
"""

from __future__ import annotations

import json
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from operator import itemgetter
from pathlib import Path

from engine.edits.errors import RevertRefused
from engine.fsutil import FILE_MODE, secure_mkdir

DB_NAME = "journal.sqlite3"
BUSY_TIMEOUT_S = 10.0

COMMITTED, REJECTED, FAILED = "committed", "rejected", "failed"
EDIT, REVERT = "edit", "revert"

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS edits (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        description TEXT NOT NULL,
        meta TEXT NOT NULL,
        time REAL NOT NULL,
        outcome TEXT NOT NULL,
        reasons TEXT NOT NULL,
        gate TEXT NOT NULL,
        reverts INTEGER,
        reverted_by INTEGER,
        tensors TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS edit_tensors (
        edit_id INTEGER NOT NULL REFERENCES edits(id),
        name TEXT NOT NULL,
        hash_before TEXT,
        PRIMARY KEY (edit_id, name)
    )""",
    "CREATE INDEX IF NOT EXISTS tensors_by_name ON edit_tensors (name, edit_id)",
)
_SELECT = "SELECT id, kind, description, meta, time, outcome, reasons, gate, reverts, reverted_by, tensors FROM edits"
_LIST = _SELECT + " WHERE id > ? ORDER BY id"
_SHOW = _SELECT + " WHERE id = ?"


@dataclass(frozen=True)
class TensorChange:
    """One tensor an edit touched (a tied group under its first name)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    hash_before: str | None
    hash_after: str | None  # None for an edit that was rolled back
    delta_norm: float | None  # ||W_after - W_before||
    relative: float | None  # delta_norm / ||W_before||


class EditRecord(tuple):
    """One journal entry: an edit (committed, rejected or failed) or a revert of one.

    The row itself (a tuple: building 10,000 of them costs one C call each); the JSON fields
    (meta, reasons, gate, tensors) are decoded when read.
    """

    __slots__ = ()
    id: int = property(itemgetter(0))
    kind: str = property(itemgetter(1))
    description: str = property(itemgetter(2))
    time: float = property(itemgetter(4))
    outcome: str = property(itemgetter(5))
    reverts: int | None = property(itemgetter(8))
    reverted_by: int | None = property(itemgetter(9))

    @property
    def meta(self) -> dict:
        return json.loads(self[3])

    @property
    def reasons(self) -> list[str]:
        return json.loads(self[6])

    @property
    def gate(self) -> dict:
        return json.loads(self[7])

    @property
    def tensors(self) -> tuple[TensorChange, ...]:
        return tuple(TensorChange(n, d, tuple(s), b, hb, ha, dn, r)
                     for n, d, s, b, hb, ha, dn, r in json.loads(self[10]))

    @property
    def names(self) -> frozenset[str]:
        return frozenset(t.name for t in self.tensors)

    @property
    def live(self) -> bool:
        """A committed edit whose change is still in the model (not reverted)."""
        return self.kind == EDIT and self.outcome == COMMITTED and self.reverted_by is None

    @property
    def time_iso(self) -> str:
        return datetime.fromtimestamp(self.time).astimezone().isoformat(timespec="seconds")

    def __repr__(self) -> str:
        return f"EditRecord(id={self.id}, kind={self.kind!r}, outcome={self.outcome!r}, {self.description!r})"


def _json(value) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple, set, frozenset)):
            return [clean(x) for x in v]
        if v is None or isinstance(v, (bool, int, float, str)):
            return v
        item = getattr(v, "item", None)
        return clean(item()) if callable(item) else repr(v)

    return json.dumps(clean(value), ensure_ascii=False, sort_keys=True)


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or math.isnan(x) else float(x)


class JournalDB:
    """The journal database of one run directory; one connection per thread."""

    def __init__(self, edits_dir: str | Path, *, create: bool = True):
        self.dir = Path(edits_dir)
        self.path = self.dir / DB_NAME
        if not create and not self.path.exists():
            raise FileNotFoundError(f"no edit journal at {self.path}")
        if create:
            secure_mkdir(self.dir)
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        conn = self._conn()
        with conn:
            for statement in _SCHEMA:
                conn.execute(statement)
        if self.path.exists():
            self.path.chmod(FILE_MODE)

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")  # survives a killed process; a power loss may lose the last
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def close(self) -> None:
        with self._lock:
            conns, self._connections = self._connections, []
        for conn in conns:
            conn.close()
        self._local = threading.local()

    # -- writing ------------------------------------------------------------------------------

    def add(self, kind: str, description: str, meta: dict, outcome: str, reasons: list[str], gate: dict,
            tensors: list[TensorChange], reverts: int | None = None, *, entry_id: int | None = None,
            created: float | None = None) -> int:
        """Record one edit or revert with its tensors in one transaction; returns its id.

        `entry_id`: the id the journal gave it when the edit was decided (else the next one);
        `created`: when it was decided (else now). A revert also marks the edit it undid, in
        the same transaction.
        """
        conn = self._conn()
        with conn:
            rows = [[t.name, t.dtype, list(t.shape), t.nbytes, t.hash_before, t.hash_after,
                     _finite_or_none(t.delta_norm), _finite_or_none(t.relative)] for t in tensors]
            cur = conn.execute(
                "INSERT INTO edits (id, kind, description, meta, time, outcome, reasons, gate, reverts, tensors)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry_id, kind, description, _json(meta), time.time() if created is None else created, outcome,
                 _json(reasons), _json(gate), reverts, json.dumps(rows, allow_nan=True)),
            )
            edit_id = cur.lastrowid
            conn.executemany("INSERT INTO edit_tensors (edit_id, name, hash_before) VALUES (?, ?, ?)",
                             [(edit_id, t.name, t.hash_before) for t in tensors])
            if reverts is not None:
                conn.execute("UPDATE edits SET reverted_by = ? WHERE id = ?", (edit_id, reverts))
        return edit_id

    def next_id(self) -> int:
        """The id the next entry gets: one more than any entry ever written."""
        conn = self._conn()
        top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM edits").fetchone()[0]
        seq = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'edits'").fetchone()
        return max(top, seq[0] if seq else 0) + 1

    def set_checkpoint(self, edit_id: int, checkpoint_id: str, reason: str) -> None:
        """Record on an edit's row the checkpoint taken when it committed (in its gate results)."""
        conn = self._conn()
        with conn:
            conn.execute("UPDATE edits SET gate = json_set(gate, '$.checkpoint', ?, '$.checkpoint_reason', ?)"
                         " WHERE id = ?", (checkpoint_id, reason, edit_id))

    # -- reading ------------------------------------------------------------------------------

    def list(self, since_id: int = 0) -> list[EditRecord]:
        """Every entry with id > since_id, oldest first."""
        rows = self._conn().execute(_LIST, (since_id,))
        return list(map(EditRecord, rows))

    def list_recent(self, limit: int) -> list[EditRecord]:
        """The newest `limit` entries, oldest first."""
        rows = self._conn().execute(_SELECT + " ORDER BY id DESC LIMIT ?", (int(limit),)).fetchall()
        return list(map(EditRecord, reversed(rows)))

    def show(self, edit_id: int) -> EditRecord:
        row = self._conn().execute(_SHOW, (edit_id,)).fetchone()
        if row is None:
            raise KeyError(f"no edit {edit_id} in the journal {self.path}")
        return EditRecord(row)

    def live_after(self, edit_id: int, names) -> list[EditRecord]:
        """Committed, unreverted edits after `edit_id` that touched any of `names`, oldest first."""
        names = list(names)
        if not names:
            return []
        conn = self._conn()
        ids = [r[0] for r in conn.execute(
            "SELECT DISTINCT e.id FROM edits e JOIN edit_tensors t ON t.edit_id = e.id"
            " WHERE e.id > ? AND e.kind = ? AND e.outcome = ? AND e.reverted_by IS NULL"
            " AND t.name IN (SELECT value FROM json_each(?)) ORDER BY e.id",
            (edit_id, EDIT, COMMITTED, json.dumps(names)),
        )]
        return [self.show(i) for i in ids]

    def plan_revert(self, edit_id: int, cascade: bool) -> list[EditRecord]:
        """The edits a revert of `edit_id` undoes, newest first; RevertRefused when it may not."""
        target = self.show(edit_id)
        if not target.live:
            state = (f"was reverted by entry {target.reverted_by}" if target.reverted_by is not None
                     else f"is a {target.kind} entry with outcome {target.outcome}")
            raise RevertRefused(f"edit {edit_id} {state}; only committed, unreverted edits can be reverted. "
                                "The model was not changed.")
        plan = self.revert_plan(target)
        later = sorted(r.id for r in plan if r.id != target.id)
        if later and not cascade:
            shared = sorted({n for r in plan if r.id != target.id for n in r.names} & target.names)
            raise RevertRefused(
                f"edit {edit_id} cannot be reverted alone: later edit(s) {', '.join(map(str, later))} touched "
                f"the same tensor(s) ({', '.join(shared)}). Revert those first, or revert {edit_id} with "
                "cascade to revert them too, newest first. The model was not changed.", later)
        return plan

    def revert_plan(self, target: EditRecord) -> list[EditRecord]:
        """The target and every later live edit that depends on it through shared tensors, newest first."""
        found = {target.id: target}
        queue = [target]
        while queue:
            record = queue.pop()
            for later in self.live_after(record.id, record.names):
                if later.id not in found:
                    found[later.id] = later
                    queue.append(later)
        return sorted(found.values(), key=lambda r: r.id, reverse=True)

    def preimage_hashes(self) -> set[str]:
        """Content hashes a revert of a live edit may need (their pre-edit blobs)."""
        rows = self._conn().execute(
            "SELECT DISTINCT t.hash_before FROM edit_tensors t JOIN edits e ON t.edit_id = e.id"
            " WHERE e.kind = ? AND e.outcome = ? AND t.hash_before IS NOT NULL", (EDIT, COMMITTED),
        )
        return {r[0] for r in rows}
