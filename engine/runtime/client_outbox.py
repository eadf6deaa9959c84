"""One attached client's outgoing events: bounded, filled by the engine without ever waiting.

The server puts each event into every client's outbox from the thread that
published it (usually the engine thread), so `put` only files the event:

- health, checkpoint list, coupling, progress per task: the latest wins (as in EventStream),
  and so do an experiment's steps (a console shows only the newest; the log of
  `redline run --detach`, which drains the engine itself, still has every one);
- events that matter (alerts, checkpoint changes, state, outcomes, command answers):
  up to `capacity`; one more means the client fell behind on what it must not
  miss, so the outbox empties itself and asks for a resynchronisation (a fresh
  snapshot), see `take`;
- the rest (log lines, steps, comparisons): up to `capacity`, the oldest dropped and counted.

What is for this client alone (answers to its commands, refusals, its role,
how many are attached) is private: kept apart, never cleared by a resync or a
snapshot (only the oldest dropped beyond `capacity`). The server's fan-out
writer (engine.runtime.fanout_writer) waits on the lock all outboxes share
until one is `due`, then `take`s what is waiting, in publish order. A `put`
wakes that writer only when what it files is due before the writer meant to
look anyway (`WakeClock`): a steady stream of steps into three outboxes wakes
it once per batch, not three times per event.

When an outbox is due, so that a steady stream of steps costs the engine
little (`put` wakes the writer at most once per batch, and each batch goes out
in one send):

- what matters and what is private: at once (at most every `URGENT_GAP`);
- routine events (steps, log lines, progress...): `gather` seconds after the
  first of them since the last take, all of them together;
- health: at most every `HEALTH_EVERY` seconds, the gauges' pace (the latest
  wins meanwhile), or sooner with anything else that is sent.
"""

from __future__ import annotations

import collections
import heapq
import itertools
import math
import operator
import threading
import time
from typing import Any, Hashable, Union

from engine.events import (
    Alert,
    CheckpointDeleted,
    CheckpointRestored,
    CheckpointSaved,
    CommandDone,
    EngineStateChanged,
    Event,
    ExperimentStep,
    HealthSnapshot,
    RunOutcome,
)
from engine.runtime.event_stream import coalesce_key

DEFAULT_CAPACITY = 2000
GATHER = 0.015  # seconds routine events wait to go together: the newest step reaches a console at most this late
HEALTH_EVERY = 0.1  # seconds between health snapshots sent to one client: the console draws its gauges at 10 Hz
URGENT_GAP = 0.002  # seconds between two sends, even for what matters: a burst goes in batches, not one by one
Item = Union[Event, dict[str, Any]]  # an event, or a protocol message of its own
_SEQ = operator.itemgetter(0)  # an outbox entry's publish order
MATTERS = (Alert, CheckpointSaved, CheckpointDeleted, CheckpointRestored, EngineStateChanged, RunOutcome, CommandDone)


def outbox_key(event: Event) -> Hashable | None:
    """What a newer event of the same key replaces in an outbox (None: every one is kept)."""
    if isinstance(event, ExperimentStep):
        return ("step", event.experiment)
    return coalesce_key(event)


class WakeClock:
    """The condition every outbox of one writer shares, and when that writer will look next.

    `wake_at` (time.monotonic()) is set by the writer as it waits: `math.inf` while it waits
    for a notify, `-math.inf` while it runs (it looks at every outbox before it waits again).
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.wake_at = math.inf

    def due_at(self, when: float) -> None:
        """Something is due at `when`: wake the writer if it would look later. Lock held."""
        if when < self.wake_at:
            self.wake_at = when
            self.cond.notify()


class ClientOutbox:
    """See the module docstring. Thread-safe; `put` never blocks."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY, *, gather: float = GATHER, health_every: float = HEALTH_EVERY,
                 clock: WakeClock | None = None):
        self.capacity = capacity
        self.gather = gather
        self.health_every = health_every
        self._clock = clock or WakeClock()  # the fan-out writer's, shared by every client's outbox
        self._lock = self._clock.cond
        self._seq = itertools.count()
        self._latest: dict[Hashable, tuple[int, Event]] = {}
        self._matters: collections.deque[tuple[int, Item]] = collections.deque()
        self._rest: collections.deque[tuple[int, Event]] = collections.deque()
        self._private: collections.deque[tuple[int, Item]] = collections.deque()
        self.dropped = 0  # of the rest, since the last take
        self.resync_needed = False
        self.closed = False
        self._routine_since: float | None = None  # monotonic time of the first routine event since the last take
        self._health_since: float | None = None  # the same for health
        self._health_sent = -health_every  # when health last went out
        self._taken = -URGENT_GAP  # when the writer last took

    def put(self, event: Event) -> None:
        with self._lock:
            if self.closed:
                return
            seq = next(self._seq)
            key = outbox_key(event)
            if isinstance(event, MATTERS) and key is None:
                if len(self._matters) >= self.capacity:
                    self._clear()
                    self.resync_needed = True
                else:
                    self._matters.append((seq, event))
                self._lock.notify()
                return
            if key is not None:
                self._latest[key] = (seq, event)
            else:
                if len(self._rest) >= self.capacity:
                    self._rest.popleft()
                    self.dropped += 1
                self._rest.append((seq, event))
            if isinstance(event, HealthSnapshot):
                if self._health_since is None:
                    self._health_since = time.monotonic()
                    self._clock.due_at(self._due())  # later ones wake nobody
            elif self._routine_since is None:
                self._routine_since = time.monotonic()
                self._clock.due_at(self._due())

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
        self._routine_since = self._health_since = None

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self._clear()
            self._private.clear()
            self._lock.notify_all()

    def pending(self) -> int:
        with self._lock:
            return len(self._latest) + len(self._matters) + len(self._rest) + len(self._private)

    def due(self) -> float | None:
        """When what waits should be sent (time.monotonic()); None when nothing waits (see the module docstring)."""
        with self._lock:
            return None if self.closed else self._due()

    def take(self, everything: bool = False, horizon: float | None = None) -> tuple[list[Item], bool, int]:
        """(events in publish order, whether a resync is needed first, how many were dropped), without waiting.

        With a resync, only the private items: the snapshot sent first stands for the rest.
        A health snapshot not due by `horizon` (monotonic; default now) stays, unless
        something urgent goes now or `everything` is asked for.
        """
        with self._lock:
            horizon = time.monotonic() if horizon is None else horizon
            return self._take_all(not everything and not self._health_due(horizon) and not self._urgent())

    def _urgent(self) -> bool:
        return bool(self.closed or self.resync_needed or self._matters or self._private)

    def _health_due(self, now: float) -> bool:
        return self._health_since is not None and now >= max(self._health_since + self.gather,
                                                              self._health_sent + self.health_every)

    def _due(self) -> float | None:
        """When the writer should next take (monotonic), None when nothing waits. Lock held."""
        if self._urgent():
            return self._taken + URGENT_GAP
        times = []
        if self._routine_since is not None:
            times.append(max(self._routine_since + self.gather, self._taken + URGENT_GAP))
        if self._health_since is not None:
            times.append(max(self._health_since + self.gather, self._health_sent + self.health_every))
        return min(times) if times else None

    def _take_all(self, hold_health: bool) -> tuple[list[Item], bool, int]:
        """Everything waiting but, with `hold_health`, a health snapshot that is not yet due. Lock held."""
        held = self._latest.pop(HealthSnapshot.kind, None) if hold_health else None
        if self.resync_needed:  # the coming snapshot stands for every shared event; private ones still go after it
            merged = list(self._private)
        elif not (self._matters or self._rest or self._private):  # the steady stream: steps and health only
            merged = sorted(self._latest.values(), key=_SEQ)
        else:
            merged = list(heapq.merge(self._matters, self._rest, self._private,
                                      sorted(self._latest.values(), key=_SEQ), key=_SEQ))
        resync, dropped = self.resync_needed, self.dropped
        health_since = self._health_since
        self._clear()
        self._private.clear()
        self.resync_needed = False
        self._taken = time.monotonic()
        if held is not None:
            self._latest[HealthSnapshot.kind] = held
            self._health_since = health_since
        elif health_since is not None:
            self._health_sent = self._taken
        return [event for _, event in merged], resync, dropped
