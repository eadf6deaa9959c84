"""JSON records <-> engine.events and engine.commands dataclasses, for recordings and the socket.

Headless runs write one event per line and the engine's socket carries events
one way and commands the other; decoding gives back the same objects the live
engine uses, so a recording can be replayed and a remote console runs the
same code as a local one. Decoding follows the dataclass type hints (a new
event, command or field needs no change here) and checks every value's type,
so a hostile record is a `DecodeError`, never a half-built object. Records
written before the engine attached severities to gauges and tensor changes are
upgraded on the way in (see `upgrade`).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from engine import commands as cmd
from engine import events as ev
from engine.gauges import health_gauges
from engine.policy import change_severity

#: every concrete event class by its JSON "event" name
EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.kind: cls
    for cls in vars(ev).values()
    if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event
}


#: every concrete command class by its JSON "command" name
COMMAND_TYPES: dict[str, type[cmd.Command]] = {
    cls.kind: cls
    for cls in vars(cmd).values()
    if isinstance(cls, type) and issubclass(cls, cmd.Command) and cls is not cmd.Command
}


class DecodeError(ValueError):
    """A record that is not a valid event (the message says which field and why)."""


def decode_event(record: dict[str, Any]) -> ev.Event | None:
    """The event a record describes; None for an event kind this version does not know."""
    if not isinstance(record, dict) or "event" not in record:
        raise DecodeError("not an event record: a JSON object with an 'event' key is expected")
    cls = EVENT_TYPES.get(record["event"])
    if cls is None:
        return None
    return upgrade(_build(cls, record), record)


def encode_command(command: cmd.Command) -> dict[str, Any]:
    """A command as a JSON-safe record: {"command": kind, field: value, ...}."""
    record: dict[str, Any] = {"command": command.kind}
    for f in dataclasses.fields(command):
        record[f.name] = getattr(command, f.name)
    return record


def decode_command(record: Any) -> cmd.Command:
    """The command a record describes; a DecodeError for anything else, an unknown kind included."""
    if not isinstance(record, dict) or not isinstance(record.get("command"), str):
        raise DecodeError("not a command record: a JSON object with a 'command' key is expected")
    cls = COMMAND_TYPES.get(record["command"])
    if cls is None:
        raise DecodeError(f"unknown command {record['command'][:40]!r}; known: {', '.join(sorted(COMMAND_TYPES))}")
    unknown = set(record) - {"command"} - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise DecodeError(f"{cls.__name__}: unknown field(s) {', '.join(sorted(unknown))[:80]}")
    return _build(cls, record)


def upgrade(event: ev.Event, record: dict[str, Any]) -> ev.Event:
    """`event` with what its older record lacks: a health scan's gauges, each tensor change's severity.

    This is the engine's own policy (engine.gauges, engine.policy, at their
    default thresholds, since a record does not carry the run's) applied to an
    old record's fields, exactly as the engine would have sent them; it is not
    a console decision.
    """
    if isinstance(event, ev.HealthSnapshot) and "gauges" not in record:
        fields = {f.name: getattr(event, f.name) for f in dataclasses.fields(event)}
        gauges = health_gauges(fields, perplexity=event.perplexity, baseline_perplexity=event.baseline_perplexity)
        return dataclasses.replace(event, gauges=gauges)
    if isinstance(event, ev.ComparisonReady):
        raw = record.get("differences") or ()
        differences = tuple(
            change if "severity" in item else dataclasses.replace(
                change, severity=change_severity(change.relative, change.change))
            for change, item in zip(event.differences, raw)
        )
        return dataclasses.replace(event, differences=differences)
    return event


def _build(cls: type, record: dict[str, Any]) -> Any:
    if not isinstance(record, dict):
        raise DecodeError(f"{cls.__name__}: expected an object, got {type(record).__name__}")
    hints = _hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in record:
            kwargs[f.name] = _convert(hints[f.name], record[f.name], f"{cls.__name__}.{f.name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise DecodeError(f"{cls.__name__}: {exc}") from None


_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    if cls not in _HINTS:
        _HINTS[cls] = typing.get_type_hints(cls)
    return _HINTS[cls]


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        return _convert(options[0], value, where) if len(options) == 1 else value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise DecodeError(f"{where}: expected a list, got {type(value).__name__}")
        args = typing.get_args(hint)
        item = args[0] if args else Any
        return tuple(_convert(item, v, where) for v in value)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        try:
            return hint(value)
        except ValueError:
            raise DecodeError(f"{where}: unknown value {value!r}") from None
    if dataclasses.is_dataclass(hint):
        return _build(hint, value)
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (str, int, bool, float) and not (isinstance(value, hint) and (hint is bool or not isinstance(value, bool))):
        raise DecodeError(f"{where}: expected {hint.__name__}, got {type(value).__name__}")
    return value
