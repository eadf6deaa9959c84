"""bench/attach.py parts 5 and 6: keys pressed as a user presses them, in a real terminal.

`redline attach` runs in a 160x48 pseudo-terminal (pexpect), driven from a process without an engine (as a
user's terminal is); the bench types the key and times until the answer is drawn: 5. `s`, Enter -> "saved
checkpoint_" drawn; 6. ctrl+x -> the header's state leaves RUNNING (STOPPING/RECOVERING/IDLE drawn), and
-> IDLE drawn (the rollback done). Beside each, the floor, in the same run: the same Save submitted in the
engine's own process (the engine's part: the checkpoint written and synced), the same EmergencyStop as a
bare socket round trip from another client.

With `trace`, the console runs with REDLINE_TRACE (console/latency_trace.py) and each press is broken down:
key read by the app, command sent, answer woke the UI, answer drained, frames written until it was seen.
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_RUNNING = [" STOPPING ", " RECOVERING ", " IDLE "]
TOAST_LIFE = 6.0  # seconds: a save's notification is gone by then, so the next match is the next save's


def _spawn(run_dir: Path, trace: Path | None):
    import pexpect

    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    env["TERM"] = "xterm-256color"
    if trace is not None:
        env["REDLINE_TRACE"] = str(trace)
    child = pexpect.spawn(sys.executable, ["-m", "console.cli", "attach", str(run_dir)], cwd=str(ROOT), env=env,
                          dimensions=(48, 160), encoding="utf-8", codec_errors="replace", timeout=60)
    child.delaybeforesend = None
    return child


def _settle(child, seconds: float) -> None:
    """Wait, then read (and forget) what was drawn meanwhile: the next match is in what comes after.
    A running experiment redraws its step count all the time, so this never waits for silence."""
    import pexpect

    time.sleep(seconds)
    while True:
        try:
            child.read_nonblocking(1 << 20, timeout=0.01)
        except pexpect.TIMEOUT:
            return


def terminal_keys(run_dir: Path, samples: int, restart: Callable[[], None], save_floor: Callable[[], float],
                  trace: Path | None = None) -> dict:
    """Seconds per press, and the floors, keyed 'save', 'save floor', 'stop', 'stop floor', 'idle', 'idle floor';
    'windows': (label, key sent at, answer seen at) in perf_counter seconds, for the trace. `save_floor()`
    saves once in the engine's own process and returns the seconds to its answer: the floor client is an
    observer (the console holds control), and an observer's Save is refused, not done."""
    import pexpect

    from console.engine_client import EngineClient
    from engine.events import EngineState, EngineStateChanged, ExperimentStep
    from engine.runtime.socket_paths import socket_path

    times: dict[str, list] = {k: [] for k in ("save", "save floor", "stop", "stop floor", "idle", "idle floor")}
    windows: list[tuple[str, float, float]] = []
    child = _spawn(run_dir, trace)
    client = EngineClient(socket_path(run_dir), name="bench-floor", control=False)
    client.start()

    def until(condition) -> float:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for event in client.drain_events():
                if condition(event):
                    return time.perf_counter()
            client.wait_events(1.0)
        raise SystemExit("bench: the floor's answer never came")

    def running_again() -> None:
        restart()
        child.expect(" RUNNING ")
        until(lambda e: isinstance(e, EngineStateChanged) and e.state is EngineState.RUNNING)
        until(lambda e: isinstance(e, ExperimentStep))  # stepping: a stop now stops it (not its start-up)
        _settle(child, 0.5)

    try:
        child.expect(" RUNNING ")
        _settle(child, 2.0)
        for _ in range(samples):
            child.send("s")
            child.expect("Purpose")
            _settle(child, 0.5)
            started = time.perf_counter()
            child.send("\r")
            child.expect("saved checkpoint_")
            seen = time.perf_counter()
            times["save"].append(seen - started)
            windows.append(("save", started, seen))
            saved_at = time.monotonic()
            _settle(child, 0.5)

            started = time.perf_counter()
            child.send("\x18")  # ctrl+x
            first = child.expect(NOT_RUNNING)
            seen = time.perf_counter()
            times["stop"].append(seen - started)
            windows.append(("stop", started, seen))
            if NOT_RUNNING[first] != " IDLE ":
                child.expect(" IDLE ")
            times["idle"].append(time.perf_counter() - started)
            running_again()

            started = time.perf_counter()
            client.emergency_stop("bench floor")
            stopped = until(lambda e: isinstance(e, EngineStateChanged) and e.state is not EngineState.RUNNING)
            times["stop floor"].append(stopped - started)
            idle = until(lambda e: isinstance(e, EngineStateChanged) and e.state is EngineState.IDLE)
            times["idle floor"].append(idle - started)
            running_again()

            times["save floor"].append(save_floor())
            _settle(child, max(0.0, TOAST_LIFE - (time.monotonic() - saved_at)))
        child.send("q")
        child.expect("Detach")
        child.send("d")
        child.expect(pexpect.EOF)
    finally:
        client.shutdown()
        child.close(force=True)
    times["windows"] = windows
    return times


def keys_in_own_process(run_dir: Path, samples: int, restart: Callable[[], None], save_floor: Callable[[], float],
                        trace: Path | None = None) -> dict:
    """terminal_keys in a process of its own, as a user's terminal is: here, the reads of the pty would wait
    for the engine thread of this process (the bench's engine) to let go of the GIL. `restart` and
    `save_floor` still run here, on the engine, asked for over a pipe."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    here, there = context.Pipe()
    process = context.Process(target=_drive, args=(there, str(run_dir), samples, str(trace) if trace else None),
                              name="bench-terminal", daemon=True)
    process.start()
    there.close()
    try:
        while True:
            try:
                kind, value = here.recv()
            except EOFError:
                raise SystemExit("bench: the terminal driver process died") from None
            if kind == "restart":
                restart()
                here.send(None)
            elif kind == "save floor":
                here.send(save_floor())
            elif kind == "done":
                return value
            else:
                raise SystemExit(f"bench: the terminal driver failed: {value}")
    finally:
        process.join(timeout=60)


def _drive(conn, run_dir: str, samples: int, trace: str | None) -> None:
    def ask(kind: str):
        conn.send((kind, None))
        return conn.recv()

    try:
        times = terminal_keys(Path(run_dir), samples, lambda: ask("restart"), lambda: ask("save floor"),
                              Path(trace) if trace else None)
    except BaseException as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        raise
    conn.send(("done", times))


def breakdown(trace: Path, windows: list[tuple[str, float, float]]) -> list[str]:
    """Median and p95 milliseconds from the bench's key to each mark of the console's trace, per kind of press."""
    from bench.attach import percentile

    marks = []
    for line in trace.read_text().splitlines():
        at, label, *detail = line.split(" ", 2)
        marks.append((float(at), label, detail[0] if detail else ""))
    lines = []
    for kind in ("save", "stop"):
        rows: dict[str, list[float]] = {}
        example: list[str] = []
        slowest = 0.0
        for label, started, seen in windows:
            if label != kind:
                continue
            inside = [(t - started, name, detail) for t, name, detail in marks if started <= t <= seen + 0.002]
            answer = "CommandDone" if kind == "save" else "EngineStateChanged"
            first = {}
            for t, name, detail in inside:
                key = name if name != "drained" or answer not in detail else "answer drained"
                first.setdefault(key, t)
            drained = first.get("answer drained")
            for name in ("key", "sent", "wake", "answer drained"):
                if name in first:
                    rows.setdefault(name, []).append(first[name])
            if drained is not None:
                after = [t for t, name, _ in inside if name == "written" and t >= drained]
                if after:
                    rows.setdefault("first frame written after the answer", []).append(after[0])
            frames = [int(d) for _, name, d in inside if name == "written"]
            rows.setdefault("frames written (count)", []).append(len(frames))
            rows.setdefault("bytes written (kB)", []).append(sum(frames) / 1000)
            rows.setdefault("seen by the bench", []).append(seen - started)
            if seen - started >= slowest:  # the slowest press, every mark: where the tail's time went
                slowest = seen - started
                example = [f"{t * 1000:7.1f} ms {name} {detail}" for t, name, detail in inside]
        lines.append(f"   {kind}: from the key written to the pty, median and p95 (each mark on its own)")
        for name, values in rows.items():
            unit = "" if "(" in name else " ms"
            scale = 1 if "(" in name else 1000
            lines.append(f"      {name:<40} {statistics.median(values) * scale:8.1f}{unit} "
                         f"{percentile(values, 0.95) * scale:8.1f}{unit}")
        lines.append(f"   {kind}: the slowest press, every mark")
        lines.extend(f"      {row}" for row in example[:60])
    return lines
