"""The engine's outbox: a thread-safe, non-blocking, bounded stream of events.

The engine thread publishes; a client (the console at ~10 Hz, headless mode, a
test) drains. A slow or absent client never blocks the engine and never makes
memory grow without bound:

- HealthSnapshot, CheckpointList and CouplingView: the latest wins (coalesced).
- Progress: the latest per task wins.
- Alert, CommandDone and EngineStateChanged: never dropped.
- Everything else: a bounded buffer; when it overflows the oldest are dropped,
  counted, and reported as one LogLine at the next drain.

`drain()` returns events in publish order; a coalesced event sits at the
position of its newest publish. No torch here.
"""

from __future__ import annotations

import collections
import itertools
import logging
import threading
from typing import Callable, Hashable

from engine.events import (
    Alert,
    CheckpointList,
    CommandDone,
    CouplingView,
    DriftMap,
    EngineStateChanged,
    Event,
    HealthSnapshot,
    LogLine,
    PolicyInfo,
    Progress,
)

log = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000
_KEPT = (Alert, CommandDone, EngineStateChanged)


def coalesce_key(event: Event) -> Hashable | None:
    if isinstance(event, (HealthSnapshot, CheckpointList, CouplingView, DriftMap, PolicyInfo)):
        return type(event).kind
    if isinstance(event, Progress):
        return ("progress", event.task)
    return None


class EventStream:
    """Publish from any thread, drain from any thread; see the module docstring."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, got {capacity}")
        self.capacity = capacity
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._seq = itertools.count()
        self._kept: collections.deque[tuple[int, Event]] = collections.deque()
        self._bounded: collections.deque[tuple[int, Event]] = collections.deque()
        self._latest: dict[Hashable, tuple[int, Event]] = {}
        self._dropped = 0
        self.dropped_total = 0
        self._taps: list[Callable[[Event], None]] = []

    def add_tap(self, tap: Callable[[Event], None]) -> None:
        """Also hand every published event to `tap`, in publish order (the socket server's fan-out).

        `tap` runs in the publishing thread with this stream's lock held, so it
        must only file the event (never block, never publish); it sees every
        event whether or not the in-process client drains.
        """
        with self._lock:
            self._taps.append(tap)

    def remove_tap(self, tap: Callable[[Event], None]) -> None:
        with self._lock:
            if tap in self._taps:
                self._taps.remove(tap)

    def publish(self, event: Event) -> None:
        """Add one event; never blocks on a client."""
        with self._lock:
            self._place(next(self._seq), event)
            for tap in self._taps:
                try:
                    tap(event)
                except Exception:  # a broken tap must not stop the engine publishing
                    log.exception("event tap %r failed", tap)
            self._ready.notify_all()

    def _place(self, seq: int, event: Event) -> None:
        """File one event by its policy: coalesced, kept, or bounded (oldest dropped). Lock held."""
        key = coalesce_key(event)
        if key is not None:
            self._latest[key] = (seq, event)
        elif isinstance(event, _KEPT):
            self._kept.append((seq, event))
        else:
            if len(self._bounded) >= self.capacity:
                self._bounded.popleft()
                self._dropped += 1
                self.dropped_total += 1
            self._bounded.append((seq, event))

    def pending(self) -> int:
        with self._lock:
            return len(self._kept) + len(self._bounded) + len(self._latest) + (1 if self._dropped else 0)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until at least one event is waiting (or `timeout`); True if one is."""
        with self._ready:
            return self._ready.wait_for(self._has_events, timeout)

    def _has_events(self) -> bool:
        return bool(self._kept or self._bounded or self._latest or self._dropped)

    def drain(self, max_events: int | None = None) -> list[Event]:
        """Take waiting events, oldest first; at most `max_events` if given."""
        if max_events is not None and max_events < 1:
            return []
        with self._lock:
            merged = sorted(itertools.chain(self._kept, self._bounded, self._latest.values()), key=lambda item: item[0])
            notice: list[Event] = []
            if self._dropped:
                notice.append(
                    LogLine(
                        text=f"{self._dropped} events were dropped because the client drained too slowly "
                        f"(buffer of {self.capacity}); alerts, state changes and command answers are never dropped",
                        source="engine",
                    )
                )
                self._dropped = 0
            if max_events is None or len(merged) + len(notice) <= max_events:
                taken, rest = merged, []
            else:
                cut = max(0, max_events - len(notice))
                taken, rest = merged[:cut], merged[cut:]
            self._kept.clear()
            self._bounded.clear()
            self._latest.clear()
            for seq, event in rest:
                self._place(seq, event)
            return notice + [event for _, event in taken]
