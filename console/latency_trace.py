"""Where the console's time goes between a key and the frame that answers it: opt-in timestamps.

Off (nothing wrapped, nothing costs) unless REDLINE_TRACE names a file. Then the running app notes, with
time.perf_counter(), each key it receives, each command it sends, each wake-up from the client's reader
thread (an answer arrived), each drain of events (and how long the drain and its display took), each
frame (when the compositor handed it over, and when its bytes were written to the terminal, with their
count), and each garbage collection (its generation and length: a long one stops the app, and the frame
writer with it). The lines are written at exit, one a mark: `seconds label detail`. bench/attach.py's
terminal parts read them (`--trace`).

REDLINE_PROFILE=FILE runs the app under cProfile and dumps its stats there at exit (`run_profiled`).
"""

from __future__ import annotations

import atexit
import gc
import os
import time
from collections.abc import Callable
from typing import Any

TRACE_ENV = "REDLINE_TRACE"
PROFILE_ENV = "REDLINE_PROFILE"


class LatencyTrace:
    """The marks of one app's run; appended from any thread (a list append is atomic)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.marks: list[tuple[float, str, str]] = []
        atexit.register(self.write)

    def mark(self, label: str, detail: object = "") -> None:
        self.marks.append((time.perf_counter(), label, str(detail)))

    def write(self) -> None:
        with open(self.path, "a", encoding="utf-8") as out:
            out.writelines(f"{t:.6f} {label} {detail}\n" for t, label, detail in self.marks)
        self.marks.clear()

    def wrap(self, owner: Any, name: str, label: str, detail: Callable[..., object] | None = None) -> None:
        """Replace owner.name by a wrapper that marks `label` before each call."""
        original = getattr(owner, name)

        def traced(*args, **kwargs):
            self.mark(label, detail(*args, **kwargs) if detail else "")
            return original(*args, **kwargs)

        setattr(owner, name, traced)


def install(app: Any) -> LatencyTrace | None:
    """Trace `app` (a RedlineApp about to pull events) when REDLINE_TRACE is set; else do nothing."""
    path = os.environ.get(TRACE_ENV)
    if not path:
        return None
    trace = LatencyTrace(path)
    on_event = app.on_event

    async def on_event_traced(event):
        if type(event).__name__ == "Key":
            trace.mark("key", getattr(event, "key", ""))
        return await on_event(event)

    app.on_event = on_event_traced
    collecting: list[float] = []

    def garbage_collection(phase: str, info: dict) -> None:
        if phase == "start":
            collecting[:] = [time.perf_counter()]
        elif collecting:
            trace.mark("gc", f"gen{info.get('generation')} {(time.perf_counter() - collecting[0]) * 1000:.1f}ms "
                             f"{info.get('collected', 0)} collected")

    gc.callbacks.append(garbage_collection)
    source = app.source
    trace.wrap(source, "submit", "sent", lambda command: type(command).__name__)
    trace.wrap(source, "emergency_stop", "sent", lambda *a, **k: "EmergencyStop")
    trace.wrap(app, "wake", "wake")
    pump = app.pump

    def pump_traced():
        started = time.perf_counter()
        pump()
        trace.mark("pumped", f"{(time.perf_counter() - started) * 1000:.1f}ms")

    app.pump = pump_traced
    drain = source.drain_events

    def drain_traced(*args, **kwargs):
        events = drain(*args, **kwargs)
        if events:
            trace.mark("drained", ",".join(sorted({type(e).__name__ for e in events})))
        return events

    source.drain_events = drain_traced
    display = app._display

    def display_traced(screen, renderable):
        dirty = sorted({w.id or type(w).__name__ for w in getattr(screen, "_dirty_widgets", ())})
        trace.mark("frame-start", f"{type(screen).__name__} {','.join(dirty)}")
        return display(screen, renderable)

    app._display = display_traced
    driver = app._driver
    if driver is not None:
        write = driver.write

        def write_traced(data):
            result = write(data)
            trace.mark("written", len(data))
            return result

        driver.write = write_traced
    return trace


def run_profiled(run: Callable[[], Any]) -> Any:
    """run() under cProfile when REDLINE_PROFILE names a file (its stats are dumped there); else just run()."""
    path = os.environ.get(PROFILE_ENV)
    if not path:
        return run()
    import cProfile

    profile = cProfile.Profile()
    try:
        return profile.runcall(run)
    finally:
        profile.dump_stats(path)
