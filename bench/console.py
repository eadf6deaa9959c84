"""Console benchmark: key -> engine-acknowledged latency, and the console's CPU use while idle.

    .venv/bin/python bench/console.py [--quick]

1. Save (s, Enter) and emergency stop (ctrl+x) pressed in the console (Textual Pilot, headless)
   while the demo experiment runs, timed until the console has applied the engine's answer:
   the save's CommandDone; the STOPPING state and the finished rollback for the stop. The
   alternative is the same request made straight on the Engine API (submit /
   emergency_stop + wait_events), measured in the same run: the ratio is what the console's
   10 Hz event pump and dialogs add.
2. CPU: `redline --experiment none` in a real pseudo-terminal at 160x48 with the engine idle,
   process CPU time over a window, minus the same engine idle without the console (the
   alternative, measured beside it, with the thread count `redline` gives its engine).
   Each side is sampled in slices; the share is printed as measured, negative included,
   with its noise (two standard errors of the difference). Goal: the console <= 5% of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DEADLINE = 120.0


def machine() -> str:
    import torch

    return f"{os.cpu_count()} cores, torch {torch.__version__}, python {sys.version.split()[0]}"


# -- 1. latency -------------------------------------------------------------------------


async def _until(condition, what: str) -> None:
    deadline = time.perf_counter() + DEADLINE
    while not condition():
        if time.perf_counter() > deadline:
            raise SystemExit(f"bench: gave up waiting for {what}")
        await asyncio.sleep(0.005)  # not pilot.pause(): that forces a full redraw on every call


class ShownAt:
    """Timestamps the first event pump after which a condition holds: when the console showed it.

    (Pilot's press() returns only once the app is idle, which on a busy machine is long after
    the console acted and the answer was on screen; that wait is not the operator's latency.)
    """

    def __init__(self, app) -> None:
        self.checks: list[tuple[object, list]] = []
        pump = app.pump

        def timed_pump() -> None:
            pump()
            now = time.perf_counter()
            for condition, found in self.checks:
                if not found and condition():
                    found.append(now)

        app.pump = timed_pump

    def watch(self, condition) -> list:
        found: list[float] = []
        self.checks.append((condition, found))
        return found


async def console_latencies(run_dir: Path, repeats: int) -> tuple[list[float], list[float], list[float]]:
    from console.app import EngineAnswered, RedlineApp
    from engine.commands import RunExperiment
    from engine.events import EngineState
    from console.cli import engine_threads
    from engine.runtime import Engine, EngineConfig

    answers: list[tuple[float, object]] = []

    def hook(message) -> None:
        if isinstance(message, EngineAnswered):
            answers.append((time.perf_counter(), message.done))

    engine = Engine(EngineConfig(model="demo", experiment="demo", run_dir=run_dir, auto_checkpoint_every=0,
                                 threads=engine_threads()))  # as `redline` runs it
    app = RedlineApp(engine)
    shown = ShownAt(app)
    running = lambda: app.state.engine_state is EngineState.RUNNING  # noqa: E731
    saves, stops, rollbacks = [], [], []
    async with app.run_test(size=(160, 48), message_hook=hook) as pilot:
        for repeat in range(repeats):
            await _until(running, "the demo experiment")
            await pilot.press("s")
            await _until(lambda: app.main.save_prompt.is_open, "the save prompt")
            before = len(answers)
            t0 = time.perf_counter()
            await pilot.press("enter")
            await _until(lambda: any(d.command == "save" for _, d in answers[before:]), "the save")
            saves.append(next(t for t, d in answers[before:] if d.command == "save") - t0)

            await _until(running, "the demo experiment")
            seen = len(app.state.stream)
            stopping = shown.watch(lambda: not running())
            done = shown.watch(lambda: any("Emergency stop complete" in e.text for e in list(app.state.stream)[seen:]))
            t0 = time.perf_counter()
            await pilot.press("ctrl+x")
            await _until(lambda: stopping and done, "the rollback")
            stops.append(stopping[0] - t0)
            rollbacks.append(done[0] - t0)
            if repeat < repeats - 1:  # after the last stop the engine stays idle: `q` then quits without asking
                engine.submit(RunExperiment(path="demo"))
        await pilot.press("q")
        await _until(lambda: not engine.is_alive(), "the engine to stop")
    return saves, stops, rollbacks


def api_latencies(run_dir: Path, repeats: int) -> tuple[list[float], list[float], list[float]]:
    from engine.commands import RunExperiment, Save
    from engine.events import Alert, CommandDone, EngineState, EngineStateChanged
    from console.cli import engine_threads
    from engine.runtime import Engine, EngineConfig

    engine = Engine(EngineConfig(model="demo", experiment="demo", run_dir=run_dir, auto_checkpoint_every=0,
                                 threads=engine_threads()))  # as `redline` runs it
    engine.start()

    def wait(predicate) -> float:
        deadline = time.perf_counter() + DEADLINE
        while True:
            for event in engine.drain_events():
                if predicate(event):
                    return time.perf_counter()
            if time.perf_counter() > deadline:
                raise SystemExit("bench: the engine did not answer")
            engine.wait_events(timeout=0.05)

    running = lambda e: isinstance(e, EngineStateChanged) and e.state is EngineState.RUNNING  # noqa: E731
    saves, stops, rollbacks = [], [], []
    try:
        wait(running)
        for _ in range(repeats):
            t0 = time.perf_counter()
            command_id = engine.submit(Save(purpose="bench"))
            saves.append(wait(lambda e: isinstance(e, CommandDone) and e.command_id == command_id) - t0)
            t0 = time.perf_counter()
            engine.emergency_stop("bench")
            stops.append(wait(lambda e: isinstance(e, EngineStateChanged) and e.state is EngineState.STOPPING) - t0)
            rollbacks.append(wait(lambda e: isinstance(e, Alert) and "Emergency stop complete" in e.message) - t0)
            engine.submit(RunExperiment(path="demo"))
            wait(running)
    finally:
        engine.shutdown(timeout=60)
    return saves, stops, rollbacks


# -- 2. idle CPU ------------------------------------------------------------------------

ENGINE_ALONE = """
import sys, time
from engine.runtime import Engine, EngineConfig
from engine.events import EngineState
engine = Engine(EngineConfig(model="demo", experiment=None, run_dir=sys.argv[1], threads=int(sys.argv[2]) or None))
engine.start()
while engine.state is not EngineState.IDLE:
    engine.drain_events(); time.sleep(0.1)
print("IDLE", flush=True)
while True:
    engine.wait_events(timeout=0.1); engine.drain_events()
"""


SLICES = 5  # CPU samples per window, for the noise estimate


def cpu_percent_slices(pid: int, window: float, keep_reading=None) -> list[float]:
    """% of one core the process used in each of SLICES equal parts of `window`."""
    import psutil

    process = psutil.Process(pid)
    out = []
    for _ in range(SLICES):
        start = sum(process.cpu_times()[:2])
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < window / SLICES:
            if keep_reading:
                keep_reading()
            else:
                time.sleep(0.1)
        out.append(100.0 * (sum(process.cpu_times()[:2]) - start) / (time.perf_counter() - t0))
    return out


def idle_cpu(window: float) -> tuple[list[float], list[float]]:
    import pexpect

    from console.cli import engine_threads

    with tempfile.TemporaryDirectory() as tmp:
        threads = str(engine_threads() or 0)  # the count `redline` gives its engine (0: torch's default)
        alone = pexpect.spawn(sys.executable, ["-c", ENGINE_ALONE, f"{tmp}/alone", threads], cwd=ROOT,
                              encoding="utf-8", timeout=DEADLINE)
        alone.expect("IDLE")
        time.sleep(2.0)  # let the baseline save and the first scans settle
        engine_only = cpu_percent_slices(alone.pid, window)
        alone.terminate(force=True)

        env = {**os.environ, "TERM": "xterm-256color"}
        child = pexpect.spawn(sys.executable, ["-m", "console.cli", "--experiment", "none", "--run-dir", f"{tmp}/console"],
                              cwd=ROOT, env=env, dimensions=(48, 160), encoding="utf-8", codec_errors="replace",
                              timeout=DEADLINE)
        child.expect("IDLE")
        time.sleep(2.0)

        def drain() -> None:  # keep reading the terminal, as a real one would
            try:
                child.read_nonblocking(65536, timeout=0.1)
            except (pexpect.TIMEOUT, pexpect.EOF):
                pass

        with_console = cpu_percent_slices(child.pid, window, drain)
        child.send("q")  # `redline` runs its engine in its own process: q asks to stop it or detach
        child.expect("Stop engine")
        child.send("y")
        child.expect(pexpect.EOF)
    return with_console, engine_only


def console_share(with_console: list[float], engine_only: list[float]) -> tuple[float, float]:
    """(console's share, noise) in % of a core: the difference of the means as measured, negative
    included, and two standard errors of that difference."""
    share = statistics.fmean(with_console) - statistics.fmean(engine_only)
    noise = 2 * (statistics.variance(with_console) / len(with_console)
                 + statistics.variance(engine_only) / len(engine_only)) ** 0.5
    return share, noise


def engine_threads_label() -> str:
    from console.cli import engine_threads

    return str(engine_threads() or "torch default")


def print_latencies(api, ui, repeats: int) -> None:
    med = statistics.median
    rows = [
        ("save: key -> CommandDone shown", med(ui[0]), med(api[0]), "<= API + 0.1 s (one pump)"),
        ("ctrl+x -> STOPPING shown", med(ui[1]), med(api[1]), "<= API + 0.1 s (one pump)"),
        ("ctrl+x -> rollback done shown", med(ui[2]), med(api[2]), "<= API + 0.1 s (one pump)"),
    ]
    print(f"\nlatency (median of {repeats}; demo experiment running)")
    print(f"{'measure':34} {'console':>10} {'API direct':>11} {'ratio':>7}  goal")
    for name, ours, alt, goal in rows:
        verdict = "OK" if ours <= alt + 0.1 else "MISSED"
        print(f"{name:34} {ours * 1e3:8.1f}ms {alt * 1e3:9.1f}ms {ours / alt if alt else float('nan'):6.2f}x  "
              f"{goal}  {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a shorter CPU window")
    parser.add_argument("--cpu-only", action="store_true", help="only part 2, the idle CPU")
    args = parser.parse_args(argv)
    repeats, window = (2, 4.0) if args.quick else (5, 10.0)
    print(f"machine: {machine()}")
    if not args.cpu_only:
        with tempfile.TemporaryDirectory() as tmp:
            api = api_latencies(Path(tmp) / "api", repeats)
            ui = asyncio.run(console_latencies(Path(tmp) / "console", repeats))
    with_console_slices, engine_only_slices = idle_cpu(window)
    with_console, engine_only = statistics.fmean(with_console_slices), statistics.fmean(engine_only_slices)
    console_cpu, noise = console_share(with_console_slices, engine_only_slices)

    if not args.cpu_only:
        print_latencies(api, ui, repeats)
    print(f"\nidle CPU over {window:.0f} s (% of one core)")
    print(f"{'measure':34} {'value':>10}")
    print(f"{'redline (console + idle engine)':34} {with_console:9.2f}%")
    print(f"{'engine alone, idle (alternative)':34} {engine_only:9.2f}%")
    within = f"   within noise (+/- {noise:.2f}%)" if abs(console_cpu) <= noise else f"   noise +/- {noise:.2f}%"
    print(f"{'console share':34} {console_cpu:9.2f}%   goal <= 5%  {'OK' if console_cpu <= 5 else 'MISSED'}{within}")
    print(f"(mean of {SLICES} slices each; noise: two standard errors of the difference; engine threads "
          f"{engine_threads_label()} on both sides)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
