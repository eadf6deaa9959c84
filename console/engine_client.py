"""EngineClient: an engine attached over its Unix socket, as the console's event source.

It offers what the console uses of an in-process `engine.runtime.Engine`
(start, submit, emergency_stop, drain_events, wait_events, shutdown,
is_alive, state), so `RedlineApp(EngineClient(path))` runs unchanged. The
engine's snapshot arrives as ordinary events first, then live events. A
reader thread fills a local buffer; nothing here ever waits on the UI.

`shutdown()` detaches (the engine keeps running); `stop_engine()` asks the
engine to stop safely (controller only). No torch here.
"""

from __future__ import annotations

import collections
import itertools
import os
import socket
import threading
from pathlib import Path
from collections.abc import Callable
from typing import Any

from engine import protocol
from engine.commands import Command, Shutdown
from engine.events import (Alert, CommandDone, EngineState, EngineStateChanged, Event, ExperimentStep, HealthSnapshot,
                           LogLine, Progress)
from engine.protocol import ProtocolError
from engine.runtime.socket_paths import connect

BUFFER = 200_000  # events held for the UI between drains
ROUTINE = (ExperimentStep, HealthSnapshot, LogLine, Progress)  # steady streams: shown at the UI's own pace
CONNECT_TIMEOUT = 10.0


class EngineClientError(ConnectionError):
    """The engine cannot be attached (no socket, refused, another protocol version)."""


class EngineClient:
    """See the module docstring."""

    detaches = True  # the console's quit and a lost terminal detach; the engine keeps running

    def __init__(self, path: str | os.PathLike, *, readonly: bool = False, control: bool = True,
                 name: str = "console"):
        self.path = Path(path)
        self.readonly = readonly
        self.wants_control = control and not readonly
        self.name = name
        self.role = protocol.ROLE_OBSERVER
        self.clients = 0
        self.server: dict[str, Any] = {}  # the engine's hello: pid, run_dir, model, state, ...
        self.closed_reason = ""
        self._sock: socket.socket | None = None
        self._events: collections.deque[Event] = collections.deque(maxlen=BUFFER)
        self._ready = threading.Condition()
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._state = EngineState.STARTING
        self._alive = False
        self.snapshots = 0  # snapshots received (more than one: the engine resynchronised this client)
        self._wakeup: Callable[[], None] | None = None
        self._wake_pending = False  # the wake-up was called and no drain has happened since

    # -- the console's event-source interface ---------------------------------------------------------
    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def label(self) -> str:
        pid = self.server.get("pid", "?")
        return f"engine {pid} · {self.server.get('model', '?')} · {self.role}"

    @property
    def reattach_hint(self) -> str:
        """The command that attaches to this engine again."""
        run_dir = self.server.get("run_dir")
        served = self.server.get("socket")
        if run_dir and served and Path(served) == self.path:
            return f"redline attach {run_dir}"
        return f"redline attach --socket {self.path}"

    def set_wakeup(self, callback: Callable[[], None] | None) -> None:
        """`callback()` (thread-safe, quick) is called from the reader thread when an event that answers
        the operator or changes the picture (a command's answer, a state change, an alert, a checkpoint) or
        the console count arrives after the last drain: once until the next drain, never once per event.
        Steps, health scans, log lines and progress wait for the UI's regular drain."""
        self._wakeup = callback

    def start(self) -> None:
        """Connect, exchange hellos, start reading (once: the app calls it again). EngineClientError when it cannot."""
        if self._sock is not None:
            return
        role = protocol.ROLE_CONTROLLER if self.wants_control else protocol.ROLE_OBSERVER
        self.server = self._handshake(role)
        self.role = self.server.get("role", role)
        self._alive = True
        threading.Thread(target=self._read_loop, name="redline-client", daemon=True).start()

    def probe(self) -> dict[str, Any]:
        """The engine's hello (pid, model, state, experiment, step, clients, ...) without attaching."""
        return self._handshake(protocol.ROLE_PROBE, keep=False)

    def _handshake(self, role: str, keep: bool = True) -> dict[str, Any]:
        try:
            sock = connect(self.path, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise EngineClientError(f"cannot connect to {self.path}: {exc.strerror or exc}") from None
        try:
            sock.settimeout(CONNECT_TIMEOUT)
            sock.sendall(protocol.encode(protocol.hello(role=role, readonly=self.readonly, client=self.name),
                                         limit=protocol.MAX_CLIENT_LINE))
            reader = protocol.LineReader(sock, protocol.MAX_SERVER_LINE)
            answer = reader.read(protocol.SERVER_TYPES)
            if answer is None:
                raise EngineClientError(f"{self.path}: the engine closed the connection without answering")
            if answer["t"] == "error":
                raise EngineClientError(f"{self.path}: {protocol.text_field(answer, 'message', limit=500)}")
            hello = protocol.check_hello(answer, "engine")
            sock.settimeout(None)
        except (ProtocolError, OSError) as exc:
            sock.close()
            raise EngineClientError(f"{self.path}: {exc}") from None
        except BaseException:
            sock.close()
            raise
        if keep:
            self._sock, self._reader = sock, reader
        else:
            sock.close()
        return hello

    def is_alive(self) -> bool:
        return self._alive

    def submit(self, command: Command) -> int:
        """Send a command; its answer comes back as CommandDone(command_id=the returned id)."""
        if not isinstance(command, Command):
            raise TypeError(f"submit() takes an engine.commands.Command, got {type(command).__name__}")
        command_id = next(self._ids)
        if not self._send(protocol.command_message(command_id, command)):
            self._push(CommandDone(command_id=command_id, command=command.kind, ok=False,
                                   message=f"refused: not attached ({self.closed_reason or 'connection closed'})"))
        return command_id

    def emergency_stop(self, reason: str = "operator") -> None:
        if not self._send({"t": "emergency_stop", "reason": reason}):
            self._push(Alert(severity="CRITICAL", message="EMERGENCY STOP NOT SENT: this console is detached "
                             f"({self.closed_reason or 'connection closed'})", source="console"))

    def take_control(self) -> None:
        self._send({"t": "take_control"})

    def stop_engine(self, checkpoint: bool = True) -> int:
        """Ask the engine to stop safely (a final checkpoint unless told not to); needs control."""
        return self.submit(Shutdown(checkpoint=checkpoint))

    def drain_events(self, max_events: int | None = None) -> list[Event]:
        with self._ready:
            self._wake_pending = False
            count = len(self._events) if max_events is None else min(max_events, len(self._events))
            return [self._events.popleft() for _ in range(count)]

    def wait_events(self, timeout: float | None = None) -> bool:
        with self._ready:
            return self._ready.wait_for(lambda: bool(self._events), timeout)

    def shutdown(self, timeout: float | None = None) -> None:
        """Detach: say goodbye and close; the engine keeps running (None: no final checkpoint was due)."""
        self._send({"t": "bye"})
        self._close("detached")

    # -- internals ------------------------------------------------------------------------------------
    def _send(self, message: dict) -> bool:
        sock = self._sock
        if sock is None or not self._alive:
            return False
        try:
            line = protocol.encode(message, limit=protocol.MAX_CLIENT_LINE)
            with self._send_lock:
                sock.sendall(line)
            return True
        except (OSError, ProtocolError) as exc:
            self.closed_reason = self.closed_reason or str(exc)
            return False

    def _push(self, event: Event) -> None:
        with self._ready:
            self._events.append(event)
            if isinstance(event, EngineStateChanged):
                self._state = event.state
            self._ready.notify_all()
        if not isinstance(event, ROUTINE):
            self._wake()

    def _wake(self) -> None:
        callback = self._wakeup
        if callback is None:
            return
        with self._ready:
            if self._wake_pending:
                return
            self._wake_pending = True
        try:
            callback()
        except RuntimeError:  # the UI loop is closed
            pass

    def _read_loop(self) -> None:
        reason = "the engine closed the connection"
        try:
            while (message := self._reader.read(protocol.SERVER_TYPES)) is not None:
                kind = message["t"]
                if kind == "event":
                    event = protocol.read_event(message)
                    if event is not None:
                        self._push(event)
                elif kind == "snapshot":
                    self.snapshots += 1
                    if message.get("resync"):
                        self._push(LogLine(text="this console fell behind; the engine sent a fresh picture",
                                           source="console"))
                elif kind == "snapshot_end" and self.snapshots == 1 and isinstance(self.server.get("away"), dict):
                    self._push(away_alert(self.server["away"]))
                elif kind == "role":
                    self.role = protocol.text_field(message, "role")
                    self._push(Alert(severity="MEDIUM", message=f"this console is now the {self.role}: "
                                     f"{protocol.text_field(message, 'reason')}", source="console"))
                elif kind == "clients":
                    self.clients = message.get("count") if isinstance(message.get("count"), int) else 0
                    self._wake()
                elif kind in ("bye", "error"):
                    reason = protocol.text_field(message, "reason" if kind == "bye" else "message", limit=500)
                    break
        except (ProtocolError, OSError) as exc:
            reason = str(exc)
        if self._alive:
            self._push(Alert(severity="HIGH", message=f"detached from the engine: {reason}", source="console"))
        self._close(reason)

    def _close(self, reason: str) -> None:
        self.closed_reason = self.closed_reason or reason
        self._alive = False
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()
        with self._ready:
            self._ready.notify_all()


def away_alert(away: dict) -> Alert:
    """The "while you were away" summary the engine sent with its hello, as one alert in the stream."""
    import time

    def number(key: str) -> int:
        value = away.get(key)
        return value if isinstance(value, int) and not isinstance(value, bool) else 0

    alerts = away.get("alerts") if isinstance(away.get("alerts"), dict) else {}
    order = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFO")
    counts = ", ".join(f"{alerts[s]} {s}" for s in order if isinstance(alerts.get(s), int) and alerts[s])
    since = away.get("since") if isinstance(away.get("since"), (int, float)) else time.time()
    minutes = max(0, int(time.time() - since)) // 60
    worst = next((s for s in order[:2] if alerts.get(s)), "INFO")
    text = (f"While you were away ({minutes // 60}h{minutes % 60:02d}m): alerts {counts or 'none'}; "
            f"{number('checkpoints')} checkpoints; {number('restores')} restores or rollbacks; {number('steps')} steps")
    return Alert(severity=worst, message=text, source="away")
