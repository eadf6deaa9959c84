"""ReplaySource: a recorded headless event log (JSON lines) as the console's event source.

`redline replay FILE.jsonl` shows what a headless run saw, read-only. It offers
the same calls as the live engine (drain_events, submit, emergency_stop,
shutdown, state) so the console needs no special path, and it refuses every
command. Its clock is the time of the latest replayed event, so what the
console derives from time (uptime, ages) is the same on every run.
"""

from __future__ import annotations

import itertools
import json
import time
from collections import deque
from pathlib import Path

from engine import events as ev
from engine.commands import Command

from engine.codec import DecodeError, decode_event


class ReplayError(Exception):
    """The recording cannot be read at all (missing, unreadable, or holds no events)."""


def read_recording(path: str | Path) -> tuple[list[ev.Event], list[str]]:
    """The events of a JSON-lines recording, and a note for every line that was skipped."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        raise ReplayError(
            f"{path}: no such file. Give the JSON-lines event log that "
            "`redline run --headless` wrote."
        ) from None
    except OSError as exc:
        raise ReplayError(f"{path}: cannot be read ({exc.strerror or exc}).") from None
    events: list[ev.Event] = []
    skipped: list[str] = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            skipped.append(f"line {number}: not JSON ({exc.msg})")
            continue
        if not isinstance(record, dict) or "event" not in record:
            continue  # headers and other records that are not events
        try:
            event = decode_event(record)
        except DecodeError as exc:
            skipped.append(f"line {number}: {exc}")
            continue
        if event is None:
            skipped.append(f"line {number}: unknown event {record['event']!r}")
        else:
            events.append(event)
    if not events:
        detail = f" ({skipped[0]})" if skipped else ""
        raise ReplayError(
            f"{path}: holds no redline events{detail}. Expected one JSON object per line, "
            'as `redline run --headless` writes ({"event": "state", ...}).'
        )
    return events, skipped


class ReplaySource:
    """Plays a recording back: all at once (speed None) or at `speed` times real time."""

    readonly = True

    def __init__(self, path: str | Path, *, speed: float | None = None):
        if speed is not None and speed <= 0:
            raise ValueError(f"replay speed must be positive, got {speed}")
        self.path = Path(path)
        self.speed = speed
        events, skipped = read_recording(self.path)
        if skipped:
            note = f"replay: {len(skipped)} line(s) of {self.path.name} skipped; first: {skipped[0]}"
            events.insert(0, ev.Alert("LOW", note, source="replay", time=events[0].time))
        self.skipped = skipped
        self._pending = deque(events)
        self._first_time = events[0].time
        self._started: float | None = None
        self._now = self._first_time
        self._state = ev.EngineState.STARTING
        self._ids = itertools.count(1)
        self._alive = False

    @property
    def label(self) -> str:
        return f"replay of {self.path.name}"

    @property
    def state(self) -> ev.EngineState:
        return self._state

    def now(self) -> float:
        """The replay clock: the time of the latest event handed out."""
        return self._now

    def start(self) -> None:
        self._started = time.monotonic()
        self._alive = True

    def is_alive(self) -> bool:
        return self._alive

    def drain_events(self, max_events: int | None = None) -> list[ev.Event]:
        if self._started is None:
            return []
        horizon = None
        if self.speed is not None:
            horizon = self._first_time + (time.monotonic() - self._started) * self.speed
        out: list[ev.Event] = []
        while self._pending and (max_events is None or len(out) < max_events):
            if horizon is not None and self._pending[0].time > horizon:
                break
            event = self._pending.popleft()
            out.append(event)
            self._now = max(self._now, event.time)
            if isinstance(event, ev.EngineStateChanged):
                self._state = event.state
        return out

    def submit(self, command: Command) -> int:
        """Refused: a recording cannot be changed. Answered like a read-only engine would."""
        command_id = next(self._ids)
        self._pending.appendleft(
            ev.CommandDone(command_id, command.kind, ok=False, message="a replay is read-only", time=self._now)
        )
        return command_id

    def emergency_stop(self, reason: str = "operator") -> None:
        self._pending.appendleft(
            ev.Alert("INFO", "emergency stop ignored: a replay is read-only", source="replay", time=self._now)
        )

    def shutdown(self, timeout: float = 30.0) -> None:
        self._alive = False
