"""The engine server's one writer: sends every attached client its events, one thread for all of them.

Every client's outbox (engine.runtime.client_outbox) shares this writer's
lock, so a publish wakes one thread however many consoles are attached, and
only when an outbox becomes due (at most once per gathered batch). The writer
takes what each due client is owed, encodes each event (and each batch owed
to several clients alike) once for all of them, and sends each client its
batch in one send that never waits: a client whose socket is full gets the
rest from its own thread (Connection.hand_off), and is skipped here until
that thread has sent it. A slow client therefore costs only
its own thread, as before, and a healthy one costs no thread wake-up of its own.

Clients are served together: when one is due, every other whose batch would be
due within `ALIGN` is taken in the same wake-up (its routine events a little
sooner, its health up to `ALIGN` early), so consoles attached at different
moments share one wake-up per batch instead of each costing the engine's
process one of its own. While events keep coming the writer looks every
`GATHER` seconds without being woken, so the publishing thread (the engine's)
pays no wake-up at all; it is woken only by what matters and by the first
event after a quiet spell.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Any

from engine.runtime.client_outbox import GATHER, WakeClock

log = logging.getLogger(__name__)

ALIGN = GATHER  # seconds: a client due this soon after another goes in the same wake-up


class FanoutWriter:
    """See the module docstring; `ready` is the lock every client's outbox shares."""

    def __init__(self) -> None:
        self.clock = WakeClock()  # every client's outbox files into it and nudges this writer through it
        self.ready = self.clock.cond
        self._streaming: list[Any] = []  # Connections past their snapshot
        self._stopped = False
        self._ticking = False  # the last look found something: the next one comes unwoken (see _wait_for_due)
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="redline-server-out", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self.ready:
            self._stopped = True
            self.ready.notify_all()
        if self._thread is not None:
            self._thread.join(2.0)

    def add(self, connection: Any) -> None:
        """`connection` has its snapshot: from now on this writer sends it its events."""
        with self.ready:
            if not connection.closed.is_set():  # closed meanwhile: its close() found nothing to remove
                self._streaming.append(connection)
                self.ready.notify_all()

    def remove(self, connection: Any) -> None:
        with self.ready:
            if connection in self._streaming:
                self._streaming.remove(connection)

    def wake(self) -> None:
        """Look again (a client's own thread finished sending what it was handed)."""
        with self.ready:
            self.ready.notify_all()

    def _run(self) -> None:
        while True:
            with self.ready:
                due = self._wait_for_due()
                if due is None:
                    return
                horizon = time.monotonic() + ALIGN
                batches = [(connection, *connection.outbox.take(horizon=horizon)) for connection in due]
            joined: dict = {}  # batch bytes by its items, shared by the clients owed the same events
            for connection, items, resync, dropped in batches:
                try:
                    connection.deliver(items, resync, dropped, joined)
                except Exception:  # one client's failure must not stop the others' events
                    log.exception("engine socket: sending to console %d failed", connection.number)
                    connection.close()

    def _wait_for_due(self) -> list[Any] | None:
        """The connections with something due, after waiting for one; None once stopped. Lock held.

        After a batch the writer looks again `GATHER` later without being woken (a steady stream
        is then sent at that pace, and a publish wakes nobody); at that look, whatever is due
        within `ALIGN` goes. Only an outbox that fills after an empty look wakes it.
        """
        slack = 0.0
        while not self._stopped:
            now = time.monotonic()
            dues = []
            for connection in self._streaming:
                if not connection.busy:
                    at = connection.outbox.due()
                    if at is not None:
                        dues.append((at, connection))
            first = min((at for at, _ in dues), default=math.inf)
            if first <= now + slack:
                self._ticking = True
                return [connection for at, connection in dues if at <= now + ALIGN]
            wake = first
            if self._ticking:  # the stream may go on: look once more a batch from now, unwoken
                self._ticking = False
                wake = min(first, now + GATHER)
            self.clock.wake_at = wake
            woken = self.ready.wait(None if wake == math.inf else wake - now)
            self.clock.wake_at = -math.inf  # looking again at every outbox: no put needs to wake it
            slack = 0.0 if woken else ALIGN
        return None
