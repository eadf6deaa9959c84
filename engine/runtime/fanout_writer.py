"""The engine server's one writer: sends every attached client its events, one thread for all of them.

Every client's outbox (engine.runtime.client_outbox) shares this writer's
lock, so a publish wakes one thread however many consoles are attached, and
only when an outbox becomes due (at most once per gathered batch). The writer
takes what each due client is owed, encodes each event once for all of them,
and sends each client its batch in one send that never waits: a client whose
socket is full gets the rest from its own thread (Connection.hand_off), and is
skipped here until that thread has sent it. A slow client therefore costs only
its own thread, as before, and a healthy one costs no thread wake-up of its own.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

log = logging.getLogger(__name__)


class FanoutWriter:
    """See the module docstring; `ready` is the lock every client's outbox shares."""

    def __init__(self) -> None:
        self.ready = threading.Condition()
        self._streaming: list[Any] = []  # Connections past their snapshot
        self._stopped = False
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
                batches = [(connection, *connection.outbox.take()) for connection in due]
            for connection, items, resync, dropped in batches:
                try:
                    connection.deliver(items, resync, dropped)
                except Exception:  # one client's failure must not stop the others' events
                    log.exception("engine socket: sending to console %d failed", connection.number)
                    connection.close()

    def _wait_for_due(self) -> list[Any] | None:
        """The connections with something due now, after waiting for one; None once stopped. Lock held."""
        while not self._stopped:
            now = time.monotonic()
            due, wake = [], None
            for connection in self._streaming:
                if connection.busy:
                    continue
                at = connection.outbox.due()
                if at is None:
                    continue
                if at <= now:
                    due.append(connection)
                elif wake is None or at < wake:
                    wake = at
            if due:
                return due
            self.ready.wait(None if wake is None else wake - now)
        return None
