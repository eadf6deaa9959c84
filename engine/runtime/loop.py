"""The one loop in which the engine thread answers commands.

The engine serves commands in five places: idle, between experiment steps,
while paused, inside `ctx.wait`, and in the error state. `CommandLoop.serve`
is that loop; a `ServeMode` says what differs between them (whether it
blocks, checks the stop flag, re-lists checkpoints, refuses commands), and
the caller says when to stop (`until`), when to wake up (`wake_by`) and what
to do with a due periodic health scan (`on_health`).
"""

from __future__ import annotations

import queue
import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class ServeMode:
    name: str
    block: bool  # wait for the next command; False: answer what is queued, then return
    check_stop: bool  # raise EmergencyStopRequested as soon as a stop is requested (inside an experiment)
    sync_checkpoints: bool  # re-list checkpoints other processes changed
    refuse: bool = False  # the error state: refuse every command but Shutdown


IDLE = ServeMode("idle", block=True, check_stop=False, sync_checkpoints=True)
BETWEEN_STEPS = ServeMode("between steps", block=False, check_stop=True, sync_checkpoints=True)
PAUSED = ServeMode("paused", block=True, check_stop=True, sync_checkpoints=True)
WAITING = ServeMode("ctx.wait", block=True, check_stop=True, sync_checkpoints=True)
ERROR = ServeMode("error", block=True, check_stop=False, sync_checkpoints=False, refuse=True)


def _never() -> bool:
    return False


class CommandLoop:
    """Serves the engine's command queue; runs in the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore: its queue, stop signal, handlers, health watch and checkpoint sync

    def serve(self, mode: ServeMode, *, until: Callable[[], bool] = _never,
              wake_by: Callable[[], float | None] | None = None,
              on_health: Callable[[dict], None] | None = None) -> None:
        """Answer commands until `until()`, a Shutdown, or (non-blocking mode) an empty queue.

        A blocking wait ends at `wake_by()` (a time.monotonic() value) and, when
        `on_health` is given, at the next periodic health scan, whose result
        goes to `on_health`.
        """
        core = self._core
        while True:
            if mode.check_stop:
                core.signal.check()
            if until() or core.exit_requested:
                return
            try:
                item = core.commands.get(timeout=self._timeout(wake_by, on_health)) if mode.block \
                    else core.commands.get_nowait()
            except queue.Empty:
                if not mode.block:
                    if mode.sync_checkpoints and core.sync.dirty:
                        core.sync.sync()
                    return
                item = None
            if mode.refuse:
                core.handlers.refuse(item, f"refused: the engine is in the error state ({core.engine.error}); "
                                           "shut it down and start again")
            else:
                core.handlers.handle(item)
            if mode.check_stop:
                core.signal.check()
            if core.exit_requested:
                return
            if mode.sync_checkpoints and mode.block and core.sync.dirty:  # non-blocking: once, when drained
                core.sync.sync()
            if on_health is not None and core.health.due:
                on_health(core.health.scan())

    def _timeout(self, wake_by: Callable[[], float | None] | None,
                 on_health: Callable[[dict], None] | None) -> float | None:
        """Seconds to wait for a command: until the earlier of `wake_by()` and a due health scan; None: forever."""
        times = [wake_by() if wake_by is not None else None,
                 self._core.health.next_due if on_health is not None else None]
        times = [t for t in times if t is not None]
        if not times:
            return None
        return max(0.0, min(times) - time.monotonic())
