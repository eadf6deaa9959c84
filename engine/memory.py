"""MemorySystem: durable observations of an experiment, in SQLite (WAL) under one directory.

The guide's point is weight sharing: modifying `model.embed_tokens.weight` also
modifies `lm_head.weight`, so with a WeightInspector attached such a change is
recorded once, as a `coupled_modification` naming the primary layer, the
coupled ones, and tags for every alias (full names and short forms such as
`embed_tokens` and `lm_head.weight`).

Concurrency: one connection per thread (the engine thread writes while the
console or another process reads); WAL lets readers proceed during a write and
`busy_timeout` makes writers wait instead of failing. Every statement is fixed
text with parameters. Files are 0600 in a 0700 directory.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable

import blake3

from engine.fsutil import FILE_MODE, secure_mkdir

DB_NAME = "memory.sqlite3"
BUSY_TIMEOUT_MS = 10_000
SCHEMA_VERSION = 2  # 2: each observation carries a checksum of its contents and tags

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS observations (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        timestamp REAL NOT NULL,
        description TEXT NOT NULL,
        category TEXT NOT NULL,
        importance REAL NOT NULL,
        data TEXT NOT NULL,
        checksum TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS tags (
        observation_id INTEGER NOT NULL REFERENCES observations(id) ON DELETE CASCADE,
        tag TEXT NOT NULL,
        PRIMARY KEY (observation_id, tag)
    )""",
    "CREATE INDEX IF NOT EXISTS tags_by_tag ON tags (tag, observation_id)",
    "CREATE INDEX IF NOT EXISTS observations_by_category ON observations (category, timestamp)",
    "CREATE INDEX IF NOT EXISTS observations_by_time ON observations (timestamp)",
)

# One fixed query: every filter is a parameter; a NULL parameter disables its filter.
_QUERY_WHERE = """
    WHERE (:category IS NULL OR o.category = :category)
      AND (:min_importance IS NULL OR o.importance >= :min_importance)
      AND (:since IS NULL OR o.timestamp >= :since)
      AND (:tags IS NULL OR (
            SELECT COUNT(DISTINCT t.tag) FROM tags t
            WHERE t.observation_id = o.id AND t.tag IN (SELECT value FROM json_each(:tags))
          ) = :tag_count)
"""
_QUERY = (
    "SELECT * FROM (SELECT o.id, o.timestamp, o.description, o.category, o.importance, o.data, o.checksum,"
    " (SELECT json_group_array(tag) FROM (SELECT tag FROM tags WHERE observation_id = o.id ORDER BY tag)) AS tags"
    " FROM observations o" + _QUERY_WHERE + " ORDER BY o.id DESC LIMIT :limit) ORDER BY id"
)
_COUNT = "SELECT COUNT(*) FROM observations o" + _QUERY_WHERE


class MemoryStoreError(RuntimeError):
    """The memory database cannot be opened or used (corrupt, not a database, wrong permissions)."""


@dataclass(frozen=True)
class Observation:
    id: int
    description: str
    category: str
    importance: float
    data: dict = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    timestamp: float = 0.0  # epoch seconds

    @property
    def time_iso(self) -> str:
        return datetime.fromtimestamp(self.timestamp).astimezone().isoformat(timespec="seconds")


def _json_default(value: Any):
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError, RuntimeError):
            pass
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return repr(value)


def _to_json(data: dict) -> str:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(data), default=_json_default, ensure_ascii=False)


def _checksum(timestamp: float, description: str, category: str, importance: float, data: str, tags) -> str:
    """blake3 of an observation's contents and tags: SQLite keeps no checksums of its own."""
    text = json.dumps([timestamp, description, category, importance, data, sorted(tags)], ensure_ascii=False)
    return blake3.blake3(text.encode("utf-8")).hexdigest()[:32]


def _since_epoch(since) -> float | None:
    if since is None:
        return None
    if isinstance(since, datetime):
        return since.timestamp()
    if isinstance(since, str):
        return datetime.fromisoformat(since).timestamp()
    if isinstance(since, (int, float)) and not isinstance(since, bool):
        return float(since)
    raise ValueError(f"since must be epoch seconds, a datetime or an ISO string, got {since!r}")


def layer_aliases(name: str) -> list[str]:
    """A parameter name and its short forms: 'model.embed_tokens.weight' -> + 'embed_tokens.weight', 'embed_tokens'."""
    parts = name.split(".")
    out = [name]
    if len(parts) >= 2:
        out += [".".join(parts[-2:]), parts[-2]]
    for a in list(out):
        if a.endswith((".weight", ".bias")):
            out.append(a.rsplit(".", 1)[0])
    seen = []
    for a in out:
        if a and a not in seen:
            seen.append(a)
    return seen


class ObservationStore:
    """`memory.observations`: queries over the recorded observations."""

    def __init__(self, system: "MemorySystem"):
        self._system = system

    def query(self, category=None, tags=None, min_importance=None, since=None, limit=None) -> list[Observation]:
        """Observations matching every given filter, oldest first; `limit` keeps the newest that many.

        tags: every tag must be present (exact match). since: epoch seconds, datetime or ISO string.
        """
        params = self._params(category, tags, min_importance, since)
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be a non-negative integer, got {limit!r}")
        params["limit"] = -1 if limit is None else limit
        rows = self._read(lambda conn: conn.execute(_QUERY, params).fetchall())
        out, damaged = [], []
        for r in rows:
            tags = json.loads(r[7]) if r[7] else []
            if r[6] is not None and r[6] != _checksum(r[1], r[2], r[3], r[4], r[5], tags):
                damaged.append(r[0])
                continue
            try:
                out.append(Observation(id=r[0], timestamp=r[1], description=r[2], category=r[3],
                                       importance=r[4], data=json.loads(r[5]), tags=tags))
            except (TypeError, ValueError):
                damaged.append(r[0])
        if damaged:
            raise self._system.damaged(damaged)
        return out

    def count(self, category=None, tags=None, min_importance=None, since=None) -> int:
        params = self._params(category, tags, min_importance, since)
        return self._read(lambda conn: conn.execute(_COUNT, params).fetchone()[0])

    def _read(self, read):
        """`read(connection)`; damage SQLite finds while reading becomes MemoryStoreError."""
        try:
            return read(self._system._conn())
        except sqlite3.OperationalError as exc:
            if "decode" not in str(exc):  # "database is locked" and the like are not damage
                raise
            raise self._system._unreadable(exc) from exc
        except sqlite3.DatabaseError as exc:  # damage found while reading
            raise self._system._unreadable(exc) from exc

    @staticmethod
    def _params(category, tags, min_importance, since) -> dict:
        if isinstance(tags, str):
            tags = [tags]
        tag_list = sorted(set(tags)) if tags else None
        return {
            "category": category,
            "min_importance": None if min_importance is None else float(min_importance),
            "since": _since_epoch(since),
            "tags": json.dumps(tag_list) if tag_list else None,
            "tag_count": len(tag_list) if tag_list else 0,
        }

    def __len__(self) -> int:
        return self.count()


class MemorySystem:
    """Observations in `<path>/memory.sqlite3`; coupled-modification tracking with a WeightInspector."""

    def __init__(self, path: str | os.PathLike):
        self.path = secure_mkdir(path).resolve()
        self.db_path = self.path / DB_NAME
        if not self.db_path.exists():
            os.close(os.open(self.db_path, os.O_WRONLY | os.O_CREAT, FILE_MODE))
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self.inspector = None
        self.observations = ObservationStore(self)
        self._init_schema()

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise MemoryStoreError(f"memory store {self.db_path} is closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            try:
                conn = sqlite3.connect(self.db_path, timeout=BUSY_TIMEOUT_MS / 1000, check_same_thread=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                conn.execute("PRAGMA synchronous = FULL")
                conn.execute("PRAGMA foreign_keys = ON")
            except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:  # a damaged header can garble PRAGMA text
                raise self._unreadable(exc) from exc
            if mode.lower() != "wal":
                raise MemoryStoreError(f"{self.db_path}: SQLite refused WAL mode (got {mode!r}); is it on a network file system?")
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def damaged(self, ids: list[int]) -> MemoryStoreError:
        shown = ", ".join(map(str, ids[:10])) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        return MemoryStoreError(
            f"{self.db_path}: observation(s) {shown} are damaged (their contents no longer match their "
            f"checksums; the file was changed on disk). Move the file aside (e.g. rename it to "
            f"{DB_NAME}.broken) to start a new memory, or restore it from a backup."
        )

    def _unreadable(self, exc: Exception) -> MemoryStoreError:
        return MemoryStoreError(
            f"{self.db_path} is not a readable Redline memory database ({exc}). "
            f"Move it aside (e.g. rename it to {DB_NAME}.broken) to start a new memory, or restore it from a backup."
        )

    def _init_schema(self) -> None:
        conn = self._conn()
        try:
            with conn:
                for stmt in _SCHEMA:
                    conn.execute(stmt)
                version = conn.execute("PRAGMA user_version").fetchone()[0]
                if version == 1:  # rows written before checksums stay unchecked (checksum NULL)
                    conn.execute("ALTER TABLE observations ADD COLUMN checksum TEXT")
                if version < SCHEMA_VERSION:
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                elif version > SCHEMA_VERSION:
                    raise MemoryStoreError(
                        f"{self.db_path} was written by a newer Redline (schema {version} > {SCHEMA_VERSION}); upgrade Redline"
                    )
            conn.execute("SELECT COUNT(*) FROM observations").fetchone()
            problems = [r[0] for r in conn.execute("PRAGMA quick_check(5)").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems))
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise self._unreadable(exc) from exc
        for suffix in ("", "-wal", "-shm"):
            f = Path(str(self.db_path) + suffix)
            if f.exists():
                os.chmod(f, FILE_MODE)

    def close(self) -> None:
        """Close every connection this object opened (any thread). Idempotent."""
        with self._lock:
            conns, self._connections = self._connections, []
            self._closed = True
        for conn in conns:
            conn.close()

    def __enter__(self) -> "MemorySystem":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- writing ---------------------------------------------------------------------------------

    def record_observation(
        self,
        description: str,
        category: str = "general",
        importance: float = 0.5,
        metadata: dict | None = None,
        tags: Iterable[str] | None = None,
    ) -> int:
        """Store one observation; returns its id. metadata becomes `.data` (JSON; odd values as their repr)."""
        if not isinstance(description, str) or not description:
            raise ValueError(f"description must be a non-empty string, got {description!r}")
        if not isinstance(category, str) or not category:
            raise ValueError(f"category must be a non-empty string, got {category!r}")
        if isinstance(importance, bool) or not isinstance(importance, (int, float)) or not 0 <= importance <= 1:
            raise ValueError(f"importance must be a number between 0 and 1, got {importance!r}")
        if metadata is not None and not isinstance(metadata, dict):
            raise ValueError(f"metadata must be a dict, got {type(metadata).__name__}")
        if isinstance(tags, str):
            tags = [tags]
        tag_list = sorted({str(t) for t in tags or ()})
        row = (time.time(), description, category, float(importance), _to_json(metadata or {}))
        conn = self._conn()
        with conn:
            cur = conn.execute(
                "INSERT INTO observations (timestamp, description, category, importance, data, checksum)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (*row, _checksum(*row, tag_list)),
            )
            obs_id = cur.lastrowid
            conn.executemany("INSERT INTO tags (observation_id, tag) VALUES (?, ?)", [(obs_id, t) for t in tag_list])
        return obs_id

    def set_weight_inspector(self, inspector) -> None:
        """Enable coupled-modification detection (a WeightInspector, or None to disable)."""
        if inspector is not None and not callable(getattr(inspector, "get_shared_layers", None)):
            raise TypeError(f"expected a WeightInspector, got {type(inspector).__name__}")
        self.inspector = inspector

    def record_modification(
        self, layer_name: str, modification_data: dict | None = None, *, importance: float = 0.6, description: str | None = None
    ) -> int:
        """Record a change to `layer_name`; a tied layer becomes one `coupled_modification` naming all aliases."""
        if not isinstance(layer_name, str) or not layer_name:
            raise ValueError(f"layer_name must be a non-empty string, got {layer_name!r}")
        modification = dict(modification_data or {})
        coupled = self.inspector.get_shared_layers(layer_name) if self.inspector is not None else []
        tags = ["modification"]
        for name in [layer_name, *coupled]:
            tags += layer_aliases(name)
        data = {"primary_layer": layer_name, "coupled_layers": coupled, "modification": modification}
        if coupled:
            tags.append("coupled_modification")
            text = description or f"Modified {layer_name} (coupled: also modifies {', '.join(coupled)})"
            category = "coupled_modification"
        else:
            text = description or f"Modified {layer_name}"
            category = "modification"
        return self.record_observation(text, category=category, importance=importance, metadata=data, tags=tags)
