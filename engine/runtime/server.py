"""The engine as a local server: consoles attach to `<run_dir>/engine.sock` (engine.protocol).

`EngineServer(engine, run_dir).start()` binds the socket (directory 0700,
socket 0600, a short runtime-dir link when the path is too long), registers
the engine for `redline ps`, and taps the engine's event stream: every event
is filed into the snapshot picture (engine_view) and into each attached
client's bounded outbox, in the publishing thread and without waiting on any
client. One fan-out writer thread sends every client its events (each encoded
once); each client has a reader thread (its commands) and a thread of its own
for its snapshots and for what its socket would not take at once; a slow,
stuck or hostile client costs only its own threads.

Roles: the first console that asks for control gets it; any other is an
observer until it explicitly takes control, which tells the previous
controller. Only the controller may save, restore, delete, pause, resume, run
or shut down; any console not attached read-only may press the emergency stop.
`stop()` flushes what clients are owed, says goodbye, closes and removes the socket.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from engine import commands as cmd
from engine import protocol
from engine.events import CommandDone, EngineState, Event
from engine.runtime.registry import register, unregister
from engine.runtime.engine_view import EngineView, journal_alerts
from engine.runtime.fanout_writer import FanoutWriter
from engine.runtime.server_connection import Connection
from engine.runtime.socket_paths import connectable_path, is_answering, socket_path

log = logging.getLogger(__name__)

MAX_CLIENTS = 32
MAX_HANDSHAKES = 16  # connections that have not said hello yet (each has HELLO_TIMEOUT to do so); more are refused
UNCLAIMED_ANSWERS = 256  # command answers published before their sender was recorded (see `claim`)
ENCODED_CACHE = 4096  # events whose line is kept, so each event is encoded once for all clients


class EngineServerError(OSError):
    """The socket cannot be served (another engine serves this run directory, or the path is unusable)."""


class EngineServer:
    """See the module docstring."""

    def __init__(self, engine: Any, run_dir: str | os.PathLike, *, outbox_capacity: int | None = None):
        self.engine = engine
        self.run_dir = Path(run_dir).expanduser().absolute()
        self.path = socket_path(self.run_dir)
        self.outbox_capacity = outbox_capacity
        self.view = EngineView(self.run_dir, engine.started_at or time.time())
        self.lock = threading.RLock()
        self.connections: list[Connection] = []
        self.controller: Connection | None = None
        self._owners: dict[int, tuple[Connection, int]] = {}  # engine command id -> (sender, its own id)
        self._unclaimed: collections.OrderedDict[int, CommandDone] = collections.OrderedDict()
        self._listener: socket.socket | None = None
        self._acceptor: threading.Thread | None = None
        self._entry: Path | None = None
        self._numbers = 0
        self._handshaking = 0  # accepted connections whose hello has not been read yet
        self._away: tuple[float, int, int] | None = None  # EngineView.mark() when the last console left
        self._paused_on_detach = False  # --on-detach pause paused the experiment; the next console resumes it
        self._stopping = threading.Event()
        self.fanout = FanoutWriter()  # sends every attached client its events; its lock is every outbox's
        self._encoded: collections.OrderedDict[int, tuple[Event, bytes]] = collections.OrderedDict()
        self._encoded_lock = threading.Lock()

    # -- lifetime ---------------------------------------------------------------------------------
    def start(self) -> None:
        self.run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.run_dir.stat().st_uid == os.getuid():
            os.chmod(self.run_dir, 0o700)
        if os.path.lexists(self.path):
            if is_answering(self.path):
                raise EngineServerError(f"another engine already serves {self.run_dir} ({self.path} answers); "
                                        "attach to it with `redline attach`, or use another --run-dir")
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(connectable_path(self.path))
            os.chmod(self.path, 0o600)
            listener.listen(socket.SOMAXCONN)  # a burst of consoles waits in the backlog, not refused
            listener.settimeout(0.25)
        except OSError as exc:
            listener.close()
            raise EngineServerError(f"cannot serve {self.path}: {exc}") from exc
        self._listener = listener
        self.fanout.start()
        self.engine._events.add_tap(self.on_event)
        self._entry = register({"pid": os.getpid(), "socket": str(self.path), "run_dir": str(self.run_dir),
                                         "model": str(self.engine.config.model), "started_at": self.view.started_at,
                                         "supervised": self.engine.config.supervised})
        self._acceptor = threading.Thread(target=self._accept_loop, name="redline-server", daemon=True)
        self._acceptor.start()

    def stop(self, flush: float = 2.0, reason: str = "the engine stopped") -> None:
        """Stop accepting, send clients what they are owed (up to `flush` s), say goodbye (with `reason`),
        remove the socket."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.engine._events.remove_tap(self.on_event)
        if self._acceptor is not None:
            self._acceptor.join(2.0)
        with self.lock:
            connections = list(self.connections)
        deadline = time.monotonic() + flush
        for connection in connections:
            connection.finish(reason, deadline)
        self.fanout.stop()
        try:
            if self._listener is not None:
                self._listener.close()
            if os.path.lexists(self.path):
                os.unlink(self.path)
        except OSError as exc:
            log.warning("could not remove %s: %s", self.path, exc)
        unregister(self._entry)

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                sock, _ = self._listener.accept()
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                if not self._stopping.is_set():
                    log.exception("engine socket accept failed")
                return
            with self.lock:
                crowded = self._handshaking >= MAX_HANDSHAKES
                if not crowded:
                    self._handshaking += 1
                    self._numbers += 1
                    number = self._numbers
            if crowded:
                _refuse(sock, f"refused: {MAX_HANDSHAKES} connections are still saying hello; try again")
                continue
            sock.settimeout(None)
            Connection(self, sock, number).start()

    def handshake_ended(self) -> None:
        """A connection said hello, or failed to: it no longer counts against MAX_HANDSHAKES."""
        with self.lock:
            self._handshaking -= 1

    # -- fan-out (called in the publishing thread, the event stream's lock held) -----------------
    def on_event(self, event: Event) -> None:
        with self.lock:
            self.view.apply(event)
            if isinstance(event, CommandDone):
                self._route_answer(event)
                return
            for connection in self.connections:
                connection.outbox.put(event)

    def _route_answer(self, done: CommandDone) -> None:
        owner = self._owners.pop(done.command_id, None)
        if owner is None:
            self._unclaimed[done.command_id] = done
            while len(self._unclaimed) > UNCLAIMED_ANSWERS:
                self._unclaimed.popitem(last=False)
            return
        connection, client_id = owner
        connection.outbox.put_private(dataclasses.replace(done, command_id=client_id))

    def claim(self, engine_id: int, connection: Connection, client_id: int) -> None:
        """Route the answer to engine command `engine_id` to `connection` (it may already have been published)."""
        with self.lock:
            self._owners[engine_id] = (connection, client_id)
            early = self._unclaimed.pop(engine_id, None)
            if early is not None:
                self._route_answer(early)

    def encoded(self, event: Event) -> bytes:
        """The protocol line of `event`, encoded once however many clients send it (the writers' threads)."""
        with self._encoded_lock:
            cached = self._encoded.get(id(event))
            if cached is not None and cached[0] is event:
                return cached[1]
        line = protocol.encode(protocol.event_message(event))
        with self._encoded_lock:
            self._encoded[id(event)] = (event, line)
            while len(self._encoded) > ENCODED_CACHE:
                self._encoded.popitem(last=False)
        return line

    # -- clients ----------------------------------------------------------------------------------
    def admit(self, connection: Connection, wants_control: bool) -> str | None:
        """Add an attached client and decide its role; a reason when it is refused."""
        with self.lock:
            if self._stopping.is_set():
                return "the engine is stopping"
            if len(self.connections) >= MAX_CLIENTS:
                return f"too many consoles attached (at most {MAX_CLIENTS})"
            if not self.connections and self._away is not None:
                connection.away = self.view.away_summary(self._away)
                self._away = None
            if self._paused_on_detach:
                self._paused_on_detach = False
                self.engine.submit(cmd.Resume())
            self.connections.append(connection)
            if wants_control and self.controller is None and not connection.readonly:
                self.controller = connection
            connection.snapshot_pending = True
            self._announce_clients()
            return None

    def leave(self, connection: Connection) -> None:
        with self.lock:
            if connection in self.connections:
                self.connections.remove(connection)
                if not self.connections:
                    self._away = self.view.mark(time.time())
                    self._act_on_detach()
            if self.controller is connection:
                self.controller = None
            for engine_id in [i for i, (c, _) in self._owners.items() if c is connection]:
                del self._owners[engine_id]
            self._announce_clients()

    def _act_on_detach(self) -> None:
        """The last console left: pause the experiment (until one attaches) or stop safely, as configured."""
        action = getattr(self.engine.config, "on_detach", "continue")
        if action == "continue" or self._stopping.is_set() or self.engine.state is EngineState.STOPPED:
            return
        if action == "pause" and self.engine.state is EngineState.RUNNING:
            self._paused_on_detach = True
            self.engine.submit(cmd.Pause())
        elif action == "stop":
            self.engine.submit(cmd.Shutdown())

    def take_control(self, connection: Connection) -> None:
        with self.lock:
            previous = self.controller
            if previous is connection:
                return
            self.controller = connection
            if previous is not None:
                previous.outbox.put_private({"t": "role", "role": "observer",
                                             "reason": f"console {connection.number} ({connection.name}) took control"})
            connection.outbox.put_private({"t": "role", "role": "controller", "reason": "you took control"})
            self._announce_clients()

    def role_of(self, connection: Connection) -> str:
        with self.lock:
            return "controller" if self.controller is connection else "observer"

    def _announce_clients(self) -> None:
        for connection in self.connections:
            connection.outbox.put_private({"t": "clients", "count": len(self.connections),
                                           "controller": self.controller.number if self.controller else None})

    def hello_fields(self) -> dict:
        with self.lock:
            return {"pid": os.getpid(), "run_dir": str(self.run_dir), "socket": str(self.path),
                    "clients": len(self.connections), **self.view.summary()}

    def snapshot(self, connection: Connection, resync: bool) -> list[Event]:
        """The picture for `connection`, taken atomically with emptying its outbox (no gap, no duplicate)."""
        earlier = [] if resync else journal_alerts(self.run_dir, before=self.view.started_at)
        with self.lock:
            connection.outbox.discard_shared()
            events = self.view.snapshot_events(earlier)
            if resync and connection.last_alert is not None:
                alerts = list(self.view.alerts)
                seen = next((i for i, a in enumerate(alerts) if a is connection.last_alert), None)
                if seen is not None:
                    skip = set(map(id, alerts[: seen + 1]))
                    events = [e for e in events if id(e) not in skip]
            return events


def _refuse(sock: socket.socket, reason: str) -> None:
    """Tell a connection the server will not serve it (never waiting on it), then close it."""
    try:
        sock.setblocking(False)
        sock.send(protocol.encode({"t": "error", "message": reason}))
    except OSError:
        pass
    sock.close()
