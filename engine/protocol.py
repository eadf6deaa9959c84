"""The engine socket's wire format: newline-delimited JSON, one message (a JSON object) a line.

Every message has a type under "t". A connection opens with a `hello` each
way carrying `PROTOCOL_VERSION`; a mismatch is a `ProtocolError` on both
sides with a message that says which versions met. Then:

  server -> client   snapshot (begin) · event ... · snapshot_end · event ... ·
                     role (this client's role changed) · clients (how many are attached) · bye (why it closes)
  client -> server   command (with the client's own id) · emergency_stop · take_control · bye

Events and commands travel as the records engine.codec reads and writes; no
pickle, nothing executed. Lines are bounded (`MAX_CLIENT_LINE` from a client,
`MAX_SERVER_LINE` from the engine): garbage, a truncated last line, an
oversized line, bytes that are not UTF-8 or a message of an unknown type are
a `ProtocolError`, and the side that sees it closes that one connection.
No torch here: the console imports this module.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from engine.codec import DecodeError, decode_command, decode_event, encode_command
from engine.commands import Command
from engine.events import Event

PROTOCOL_VERSION = 1
MAX_CLIENT_LINE = 64 * 1024  # commands are small; a client never needs more
MAX_SERVER_LINE = 16 * 1024 * 1024  # one event; a checkpoint list of thousands of entries fits

ROLE_CONTROLLER = "controller"  # may save, restore, delete, pause, resume, run, stop
ROLE_OBSERVER = "observer"  # watches; may compare and (unless read-only) press the emergency stop
ROLE_PROBE = "probe"  # `redline ps`: the hello answer only, then the connection ends
ROLES = (ROLE_CONTROLLER, ROLE_OBSERVER, ROLE_PROBE)

CLIENT_TYPES = ("hello", "command", "emergency_stop", "take_control", "bye")
SERVER_TYPES = ("hello", "snapshot", "snapshot_end", "event", "role", "clients", "bye", "error")


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow; the connection must be closed."""


def encode(message: dict[str, Any], *, limit: int = MAX_SERVER_LINE) -> bytes:
    """One line: the message as compact JSON and a newline; refused when longer than `limit`."""
    line = json.dumps(message, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8") + b"\n"
    if len(line) > limit:
        raise ProtocolError(f"a {message.get('t')!r} message of {len(line)} bytes exceeds the line limit of {limit}")
    return line


def decode(line: bytes, allowed: tuple[str, ...]) -> dict[str, Any]:
    """The message one line holds (newline stripped or not); ProtocolError for anything else."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"a line is not UTF-8 (byte {exc.start})") from None
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise ProtocolError(f"a line is not JSON ({str(exc)[:80]})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"a message must be a JSON object, got {type(message).__name__}")
    kind = message.get("t")
    if kind not in allowed:
        raise ProtocolError(f"unknown message type {str(kind)[:40]!r}; expected one of {', '.join(allowed)}")
    return message


# -- messages -----------------------------------------------------------------------------------
def hello(**fields: Any) -> dict[str, Any]:
    return {"t": "hello", "version": PROTOCOL_VERSION, **fields}


def check_hello(message: dict[str, Any], peer: str) -> dict[str, Any]:
    """`message` if it is a hello of this protocol version; else a ProtocolError naming both versions."""
    if message.get("t") != "hello":
        raise ProtocolError(f"the {peer} did not start with a hello (got {str(message.get('t'))[:40]!r})")
    version = message.get("version")
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version mismatch: the {peer} speaks version {str(version)[:20]}, "
                            f"this side speaks version {PROTOCOL_VERSION}; use the same Redline version on both ends")
    return message


def event_message(event: Event) -> dict[str, Any]:
    return {"t": "event", "e": event.to_dict()}


def read_event(message: dict[str, Any]) -> Event | None:
    """The event an "event" message carries; None for an event kind this version does not know."""
    try:
        return decode_event(message.get("e"))
    except DecodeError as exc:
        raise ProtocolError(f"bad event: {exc}") from None


def command_message(command_id: int, command: Command) -> dict[str, Any]:
    return {"t": "command", "id": command_id, "c": encode_command(command)}


def read_command(message: dict[str, Any]) -> tuple[int, Command]:
    """The client's id and the command of a "command" message."""
    command_id = message.get("id")
    if not isinstance(command_id, int) or isinstance(command_id, bool) or not 0 < command_id < 2**53:
        raise ProtocolError("a command needs a positive integer id")
    try:
        return command_id, decode_command(message.get("c"))
    except DecodeError as exc:
        raise ProtocolError(f"bad command: {exc}") from None


def text_field(message: dict[str, Any], name: str, default: str = "", limit: int = 200) -> str:
    """A short text field of a message (a reason, a client name); ProtocolError if it is not text."""
    value = message.get(name, default)
    if not isinstance(value, str):
        raise ProtocolError(f"{name!r} must be text")
    return value[:limit]


# -- reading lines ------------------------------------------------------------------------------
class LineReader:
    """Reads bounded lines from a socket; EOF in the middle of a line is a ProtocolError (truncated)."""

    def __init__(self, sock: socket.socket, limit: int, chunk: int = 65536):
        self._sock = sock
        self._limit = limit
        self._chunk = chunk
        self._buffer = bytearray()
        self._scan_from = 0

    def read_line(self) -> bytes | None:
        """The next line without its newline; None at a clean end of the stream."""
        while True:
            end = self._buffer.find(b"\n", self._scan_from)
            if end >= 0:
                line = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                self._scan_from = 0
                if len(line) + 1 > self._limit:
                    raise ProtocolError(f"a line of {len(line) + 1} bytes exceeds the limit of {self._limit}")
                return line
            if len(self._buffer) >= self._limit:
                raise ProtocolError(f"a line longer than the limit of {self._limit} bytes")
            self._scan_from = len(self._buffer)
            data = self._sock.recv(min(self._chunk, self._limit + 1 - len(self._buffer)))
            if not data:
                if self._buffer:
                    raise ProtocolError(f"the connection ended in the middle of a line ({len(self._buffer)} bytes)")
                return None
            self._buffer += data

    def read(self, allowed: tuple[str, ...]) -> dict[str, Any] | None:
        """The next message (None at a clean end); ProtocolError for a bad one."""
        line = self.read_line()
        return None if line is None else decode(line, allowed)
