"""One attached client of the engine server: its handshake, its commands in, its events out.

The reader thread checks the peer's uid, reads the hello, then reads
commands and acts on them as the client's role allows; the connection's own
writer thread sends the hello answer and the snapshot, then hands the client
to the server's fan-out writer (engine.runtime.fanout_writer), which sends it
its events without ever waiting on it; the own thread sends only what would
wait (the rest of a batch the socket did not take, a resync's snapshot).
Anything the protocol does not allow ends this connection only, with the
reason sent as an "error" message when the socket still takes it.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
import time
from typing import Any

from engine import commands as cmd
from engine import protocol
from engine.events import Alert, CommandDone, Event, LogLine
from engine.protocol import ProtocolError
from engine.runtime.client_outbox import DEFAULT_CAPACITY, ClientOutbox

log = logging.getLogger(__name__)

HELLO_TIMEOUT = 10.0  # seconds a new connection has to say hello
CONTROLLER_ONLY = (cmd.Save, cmd.Restore, cmd.Delete, cmd.Pause, cmd.Resume, cmd.RunExperiment, cmd.Shutdown)


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a connected Unix socket (SO_PEERCRED)."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", raw)
    return uid


def peer_allowed(uid: int, own_uid: int | None = None) -> bool:
    """Only the engine's own user may attach (root included: it is another user)."""
    return uid == (os.getuid() if own_uid is None else own_uid)


class Connection:
    """See the module docstring; `server` is the EngineServer."""

    def __init__(self, server: Any, sock: socket.socket, number: int):
        self.server = server
        self.sock = sock
        self.number = number
        self.name = "client"
        self.role = protocol.ROLE_OBSERVER
        self.readonly = True
        self.outbox = ClientOutbox(server.outbox_capacity or DEFAULT_CAPACITY, clock=server.fanout.clock)
        self.snapshot_pending = False
        self.last_alert: Alert | None = None  # the last shared alert sent (a resync skips it and those before)
        self._told: dict[int, Alert] = {}  # this client's own alerts not yet sent (never in the engine's picture)
        self.away: dict | None = None  # what happened while no console was attached (EngineView.away_summary)
        self.closed = threading.Event()
        self._send_lock = threading.Lock()
        self._writer: threading.Thread | None = None
        self.busy = False  # this connection's own thread is sending something handed to it; the fan-out waits
        self._handed = b""  # what the socket did not take at once
        self._resync_then: list | None = None  # a resync is due: the snapshot, then these (this client's own items)
        self._job = threading.Event()

    def start(self) -> None:
        threading.Thread(target=self._read_loop, name=f"redline-client-{self.number}-in", daemon=True).start()

    # -- in -------------------------------------------------------------------------------------
    def _read_loop(self) -> None:
        admitted = False
        greeting = True  # counted by the server among the connections still saying hello
        try:
            uid = peer_uid(self.sock)
            if not peer_allowed(uid):
                raise ProtocolError(f"refused: uid {uid} is not the engine's user; only the same user may attach")
            self.sock.settimeout(HELLO_TIMEOUT)
            reader = protocol.LineReader(self.sock, protocol.MAX_CLIENT_LINE)
            message = reader.read(protocol.CLIENT_TYPES)
            greeting = False
            self.server.handshake_ended()
            if message is None:
                return
            self._hello(protocol.check_hello(message, "console"))
            if self.role == protocol.ROLE_PROBE:
                self._send([protocol.encode(protocol.hello(role=self.role, **self.server.hello_fields()))])
                return
            refused = self.server.admit(self, wants_control=self.role == protocol.ROLE_CONTROLLER)
            if refused:
                raise ProtocolError(f"refused: {refused}")
            admitted = True
            self.sock.settimeout(None)
            self._writer = threading.Thread(target=self._write_loop, name=f"redline-client-{self.number}-out",
                                             daemon=True)
            self._writer.start()
            while (message := reader.read(protocol.CLIENT_TYPES)) is not None:
                if message["t"] == "bye":
                    break
                self._act(message)
        except ProtocolError as exc:
            log.info("engine socket: console %d closed: %s", self.number, exc)
            self._send_error(str(exc))
        except (OSError, TimeoutError) as exc:
            log.info("engine socket: console %d gone: %s", self.number, exc)
        finally:
            if greeting:
                self.server.handshake_ended()
            if admitted:
                self.server.leave(self)
            self.close()

    def _hello(self, message: dict) -> None:
        role = message.get("role", protocol.ROLE_OBSERVER)
        if role not in protocol.ROLES:
            raise ProtocolError(f"unknown role {str(role)[:40]!r}; expected one of {', '.join(protocol.ROLES)}")
        readonly = message.get("readonly", False)
        if not isinstance(readonly, bool):
            raise ProtocolError("'readonly' must be true or false")
        self.role, self.readonly = role, readonly
        self.name = protocol.text_field(message, "client", "client", limit=60)

    def _act(self, message: dict) -> None:
        kind = message["t"]
        if kind == "command":
            client_id, command = protocol.read_command(message)
            self._command(client_id, command)
        elif kind == "emergency_stop":
            reason = protocol.text_field(message, "reason", "operator")
            if self.readonly:
                self._tell("emergency stop refused: this console attached read-only")
            else:
                self.server.engine.emergency_stop(f"{reason} (console {self.number})")
        elif kind == "take_control":
            if self.readonly:
                self._tell("taking control refused: this console attached read-only")
            else:
                self.server.take_control(self)
        else:
            raise ProtocolError(f"a {kind!r} message is not allowed after the hello")

    def _command(self, client_id: int, command: cmd.Command) -> None:
        refusal = ""
        if self.readonly and (command.mutates or isinstance(command, (cmd.Shutdown, cmd.EmergencyStop))):
            refusal = "refused: this console attached read-only"
        elif isinstance(command, CONTROLLER_ONLY) and self.server.role_of(self) != protocol.ROLE_CONTROLLER:
            refusal = "refused: this console is an observer; take control first"
        if refusal:
            self.outbox.put_private(CommandDone(command_id=client_id, command=command.kind, ok=False, message=refusal))
            return
        engine_id = self.server.engine.submit(command)
        self.server.claim(engine_id, self, client_id)

    def _tell(self, text: str) -> None:
        alert = Alert(severity="LOW", message=text, source="server")
        if len(self._told) > 2 * self.outbox.capacity:  # dropped from a full outbox, never sent
            self._told.clear()
        self._told[id(alert)] = alert
        self.outbox.put_private(alert)

    # -- out ------------------------------------------------------------------------------------
    def _write_loop(self) -> None:
        try:
            hello = protocol.hello(role=self.server.role_of(self), console=self.number, away=self.away,
                                   **self.server.hello_fields())
            self._send([protocol.encode(hello)])
            self._send_snapshot(resync=False)
            self.server.fanout.add(self)
            while not self.closed.is_set() and not self.outbox.closed:
                if not self._job.wait(1.0):
                    continue
                self._job.clear()
                if self._resync_then is not None:
                    self._send_snapshot(resync=True)
                    self._send(self._encode_all(self._resync_then))
                elif self._handed:
                    self._send([self._handed])
                self._handed, self._resync_then = b"", None
                self.busy = False
                self.server.fanout.wake()
        except OSError as exc:
            log.info("engine socket: console %d write ended: %s", self.number, exc)
        finally:
            self.close()

    def deliver(self, items: list, resync: bool, dropped: int, joined: dict | None = None) -> None:
        """Send a batch the fan-out writer took, without waiting: what would wait goes to this connection's thread.

        `joined` (the writer's, for one wake-up) keeps each batch's bytes by the identity of its items:
        consoles that are owed the same events share one encoding.
        """
        if dropped and not resync:
            items.insert(0, LogLine(text=f"{dropped} log lines or steps were dropped: this console read too slowly",
                                    source="server"))
        if resync:  # the snapshot first, then this batch (only this client's own items), from this client's thread
            self._hand_off(b"", resync_then=items)
            return
        key = tuple(map(id, items)) if joined is not None else None
        data = joined.get(key) if key is not None else None
        if data is None:
            data = b"".join(self._encode_all(items))
            if key is not None:
                joined[key] = data
        else:
            self._note_alerts(items)
        if not data:
            return
        try:
            with self._send_lock:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            log.info("engine socket: console %d write ended: %s", self.number, exc)
            self.close()
            return
        if sent < len(data):
            self._hand_off(data[sent:])

    def _hand_off(self, data: bytes, resync_then: list | None = None) -> None:
        """Let this connection's own thread send `data`, or a resync's snapshot and then `resync_then`."""
        self.busy = True
        self._handed, self._resync_then = data, resync_then
        self._job.set()

    def _send_snapshot(self, resync: bool) -> None:
        events = self.server.snapshot(self, resync)
        self._send([protocol.encode({"t": "snapshot", "resync": resync, "events": len(events)}),
                    *self._encode_all(events), protocol.encode({"t": "snapshot_end"})])

    def _encode_all(self, items: list) -> list[bytes]:
        lines = []
        for item in items:
            try:
                lines.append(self.server.encoded(item) if isinstance(item, Event) else protocol.encode(item))
            except ProtocolError as exc:
                lines.append(protocol.encode(protocol.event_message(LogLine(text=f"not sent: {exc}", source="server"))))
        self._note_alerts(items)
        return lines

    def _note_alerts(self, items: list) -> None:
        """Remember the last shared alert sent (a resync starts after it); this client's own are not shared."""
        for item in items:
            if isinstance(item, Alert) and self._told.pop(id(item), None) is None:
                self.last_alert = item

    def _send(self, lines: list[bytes]) -> None:
        with self._send_lock:
            self.sock.sendall(b"".join(lines))

    def _send_error(self, text: str) -> None:
        try:
            self.sock.settimeout(1.0)
            self._send([protocol.encode({"t": "error", "message": text[:500]})])
        except (OSError, ProtocolError):
            pass

    # -- end ------------------------------------------------------------------------------------
    def finish(self, reason: str, deadline: float) -> None:
        """The server is stopping: let the writer send what is queued and a goodbye with `reason` until `deadline`."""
        self.outbox.put_private({"t": "bye", "reason": reason})
        while self.outbox.pending() and not self.closed.is_set() and time.monotonic() < deadline:
            time.sleep(0.02)
        self.outbox.close()
        self._job.set()
        if self._writer is not None:
            self._writer.join(max(0.0, deadline - time.monotonic()))
        self.close()

    def close(self) -> None:
        if self.closed.is_set():
            return
        self.closed.set()
        self.outbox.close()
        self.server.fanout.remove(self)
        self._job.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
