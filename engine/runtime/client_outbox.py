"""One attached client's outgoing events: bounded, filled by the engine without ever waiting.

The server puts each event into every client's outbox from the thread that
published it (usually the engine thread), so `put` only files the event:

- health, checkpoint list, coupling, progress per task: the latest wins (as in EventStream);
- events that matter (alerts, checkpoint changes, state, outcomes, command answers):
  up to `capacity`; one more means the client fell behind on what it must not
  miss, so the outbox empties itself and asks for a resynchronisation (a fresh
  snapshot), see `take`;
- the rest (log lines, steps, comparisons): up to `capacity`, the oldest dropped and counted.

What is for this client alone (answers to its commands, refusals, its role,
how many are attached) is private: kept apart, never cleared by a resync or a
snapshot (only the oldest dropped beyond `capacity`). The client's writer
thread `take`s what is waiting, in publish order.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import threading
from typing import Any, Hashable, Union

from engine.events import (
    Alert,
    CheckpointDeleted,
    CheckpointRestored,
    CheckpointSaved,
    CommandDone,
    EngineStateChanged,
    Event,
    RunOutcome,
)
from engine.runtime.event_stream import coalesce_key

DEFAULT_CAPACITY = 2000
Item = Union[Event, dict[str, Any]]  # an event, or a protocol message of its own
MATTERS = (Alert, CheckpointSaved, CheckpointDeleted, CheckpointRestored, EngineStateChanged, RunOutcome, CommandDone)


class ClientOutbox:
    """See the module docstring. Thread-safe; `put` never blocks."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        self.capacity = capacity
        self._lock = threading.Condition()
        self._seq = itertools.count()
        self._latest: dict[Hashable, tuple[int, Event]] = {}
        self._matters: collections.deque[tuple[int, Item]] = collections.deque()
        self._rest: collections.deque[tuple[int, Event]] = collections.deque()
        self._private: collections.deque[tuple[int, Item]] = collections.deque()
        self.dropped = 0  # of the rest, since the last take
        self.resync_needed = False
        self.closed = False

    def put(self, event: Event) -> None:
        with self._lock:
            if self.closed:
                return
            seq = next(self._seq)
            key = coalesce_key(event)
            if key is not None:
                self._latest[key] = (seq, event)
            elif isinstance(event, MATTERS):
                if len(self._matters) >= self.capacity:
                    self._clear()
                    self.resync_needed = True
                else:
                    self._matters.append((seq, event))
            else:
                if len(self._rest) >= self.capacity:
                    self._rest.popleft()
                    self.dropped += 1
                self._rest.append((seq, event))
            self._lock.notify()

    def put_private(self, item: Item) -> None:
        """An event or protocol message for this client only; survives resyncs and snapshots."""
        with self._lock:
            if self.closed:
                return
            if len(self._private) >= self.capacity:
                self._private.popleft()
            self._private.append((next(self._seq), item))
            self._lock.notify()

    def discard_shared(self) -> None:
        """Forget every shared event (a snapshot is about to stand for them); private items stay."""
        with self._lock:
            self._clear()
            self.resync_needed = False

    def _clear(self) -> None:
        self._latest.clear()
        self._matters.clear()
        self._rest.clear()
        self.dropped = 0

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._clear()
            self._private.clear()
            self._lock.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self._latest) + len(self._matters) + len(self._rest) + len(self._private)

    def take(self, timeout: float | None = None) -> tuple[list[Item], bool, int]:
        """(events in publish order, whether a resync is needed first, how many were dropped); waits up to `timeout`."""
        with self._lock:
            self._lock.wait_for(lambda: self.closed or self.resync_needed or self._matters or self._rest
                                or self._latest or self._private, timeout)
            merged = list(heapq.merge(self._matters, self._rest, self._private,
                                      sorted(self._latest.values(), key=lambda i: i[0]), key=lambda item: item[0]))
            resync, dropped = self.resync_needed, self.dropped
            self._clear()
            self._private.clear()
            self.resync_needed = False
            return [event for _, event in merged], resync, dropped
