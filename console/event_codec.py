"""Turn JSON event records (as `Event.to_dict` writes them) back into engine.events dataclasses.

Headless runs write one event per line; reading them back gives the same
objects the live engine hands the console, so a recording can be replayed.
Decoding follows the dataclass type hints, so a new event or field in
engine/events.py needs no change here. Records written before the engine
attached severities to gauges and tensor changes are upgraded on the way in
(see `upgrade`).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from typing import Any

from engine import events as ev
from engine.gauges import health_gauges
from engine.policy import change_severity

#: every concrete event class by its JSON "event" name
EVENT_TYPES: dict[str, type[ev.Event]] = {
    cls.kind: cls
    for cls in vars(ev).values()
    if isinstance(cls, type) and issubclass(cls, ev.Event) and cls is not ev.Event
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
    if hint is float and isinstance(value, int):
        return float(value)
    return value
