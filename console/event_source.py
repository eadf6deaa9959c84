"""What the console needs from an event source: the live Engine or a ReplaySource."""

from __future__ import annotations

from typing import Protocol

from engine.commands import Command
from engine.events import EngineState, Event


class EventSource(Protocol):
    def start(self) -> None: ...
    def submit(self, command: Command) -> int: ...
    def emergency_stop(self, reason: str = "operator") -> None: ...
    def drain_events(self, max_events: int | None = None) -> list[Event]: ...
    def shutdown(self, timeout: float | None = None) -> object: ...  # the engine's ShutdownResult; None for a replay
    def is_alive(self) -> bool: ...
    @property
    def state(self) -> EngineState: ...


def is_readonly(source: object) -> bool:
    """A replay, or an engine started with readonly=True."""
    config = getattr(source, "config", None)
    return bool(getattr(source, "readonly", False) or getattr(config, "readonly", False))


def describe(source: object) -> str:
    label = getattr(source, "label", None)
    if label:
        return str(label)
    config = getattr(source, "config", None)
    return f"model {getattr(config, 'model', '?')}"


def attachment(source: object) -> str:
    """"CONTROLLER · 2 consoles" for a console attached over the engine socket; "" for any other source."""
    role = getattr(source, "role", None)
    if not role:
        return ""
    count = getattr(source, "clients", 0) or 1
    return f"{str(role).upper()} · {count} console{'s' if count != 1 else ''}"
