"""Attach benchmark: what serving consoles over the engine socket costs.

    .venv/bin/python bench/attach.py [--seconds S] [--model PATH|demo]

1. Event latency, engine -> client: while an experiment steps, the time from an
   ExperimentStep's creation (its `time` field) to its arrival, for a console
   attached over <run_dir>/engine.sock (console.engine_client) against the
   in-process consumer draining the Engine directly (the alternative), both in
   the same run. A client's outbox keeps only the newest step (what a console
   shows), so the socket's figures are the age of the step a console receives.
   Goal: the socket adds <= 20 ms at p95.
2. Engine step time with three consoles attached (in another process, as real
   consoles are) against none, alternating windows in one run (medians of
   --rounds windows each), on an engine of its own whose events are also written
   out as `redline run --detach` writes its log. Two steps: the toy step of the
   other parts (an in-place multiply and a 2 ms ctx.wait) and a forward/backward
   of the tiny model (no wait: the engine never idles). Beside them, where each
   step's CPU goes: the engine thread, the server's threads, the consoles' process.
   A third window, no console but a busy process beside, is a control: on a
   virtual machine a busy neighbour core can make steps faster (cheaper wake-ups),
   which would flatter the three-console windows. Goal: <= 2 % slower.
3. Key -> acknowledgement on screen, in the real console app (Textual, headless):
   save (Enter in the save dialog -> the "saved" notification) and ctrl+x (the key
   -> the engine's state change shown), for a console attached over the socket
   (woken by the client when events arrive) against today's in-process console
   (polling the engine at 10 Hz), alternating, on the same engine. Goal <= 50 ms p95.
   Also, for save, the engine's answer -> shown: the part the console's wake-up
   shortens (the rest is the engine doing the work). Pilot waits for the app to be idle
   around each key, so these figures hold more than a user sees; part 5 is the user's view.
4. Attach to a full screen: 1,000 checkpoint entries and 10,000 alerts in the
   engine's picture; from connecting to the table and stream drawn, the console in a
   process of its own (as `redline attach` starts one). Goal <= 1 s.
5. Save as a user does it: `redline attach` in a real 160x48 pseudo-terminal (pexpect), `s`,
   Enter, until the "saved" answer is drawn, beside the same Save submitted in the engine's own
   process (the floor: the engine's part, the checkpoint written and synced). Goal <= 50 ms p95.
6. Emergency stop as a user does it, in the same terminal: ctrl+x until the header's state leaves
   RUNNING, and until IDLE (rolled back) is drawn, beside the same EmergencyStop as a bare socket
   round trip. Goal <= 50 ms p95 (to the state shown). Parts 5 and 6: bench/attach_terminal.py;
   `--trace` breaks each press down (key read, command sent, answer drained, frames written).

`--parts 3,4,5,6` picks among the parts after 2 (1 and 2 always run: `--seconds 1` keeps them short).

The model is a tiny tied Qwen2 built here (no download) unless --model names one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EXPERIMENT = """
import torch

def run(ctx):
    weight = ctx.model.model.layers[0].mlp.up_proj.weight
    while True:
        with torch.no_grad():
            weight.mul_(1.0)
        ctx.step("touch up_proj")
        ctx.wait(0.002)
"""

TRAIN = """
import torch

def run(ctx):
    model = ctx.model
    ids = torch.randint(0, model.config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    while True:
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        model.zero_grad(set_to_none=True)
        ctx.step("forward/backward", loss=loss.detach())
"""


def tiny_model(directory: Path) -> Path:
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from engine.tokenizer import byte_tokenizer

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Consumer(threading.Thread):
    """Drains a source (Engine or EngineClient) as fast as events come, noting each step's latency."""

    def __init__(self, source, record: bool = True):
        super().__init__(daemon=True)
        self.source, self.record = source, record
        self.latencies: list[float] = []
        self.steps: list[tuple[float, int]] = []  # (arrival, step number)
        self.done = threading.Event()

    def run(self) -> None:
        from engine.events import ExperimentStep

        while not self.done.is_set():
            self.source.wait_events(timeout=0.2)
            for event in self.source.drain_events():
                if isinstance(event, ExperimentStep) and self.record:
                    now = time.time()
                    self.latencies.append(now - event.time)
                    self.steps.append((now, event.step))


WINDOWS = ("none", "busy", "three")  # part 2's windows: no console, no console but a busy process beside, three
BUSY = "import select, sys\nwhile not select.select([sys.stdin], [], [], 0)[0]:\n    pass"  # spins (niced) until stdin closes


def thread_cpu() -> dict[str, float]:
    """CPU seconds so far of this process's threads, grouped: the engine, the server, the rest (Linux /proc)."""
    names = {t.native_id: t.name for t in threading.enumerate()}
    groups: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        name = names.get(int(tid), "")
        group = ("engine thread" if name == "redline-engine" else
                 "server writers" if name.endswith("-out") else
                 "server readers, acceptor" if name.startswith("redline-") else "log writer, other")
        groups[group] = groups.get(group, 0.0) + process_cpu(f"/proc/self/task/{tid}/stat")
    return groups


def process_cpu(stat: str) -> float:
    """User + system CPU seconds from a /proc .../stat file."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def step_windows(model: str, run_dir: Path, experiment: Path, seconds: float, rounds: int) -> dict:
    """Part 2 on one experiment: ms per step in alternating windows without and with three consoles (another
    process), and each window's CPU per step by thread group."""
    import subprocess

    from engine.runtime import Engine, EngineConfig
    from engine.runtime.headless import LOG_EVERY, _print
    from engine.runtime.socket_paths import socket_path

    import torch

    threads = torch.get_num_threads()  # one torch thread: no spinning workers on a shared machine; restored after
    engine = Engine(EngineConfig(model=model, experiment=str(experiment), run_dir=run_dir, device="cpu",
                                 serve=True, auto_checkpoint_every=0, evaluate_every=0, threads=1))
    engine.start()
    log = open(os.devnull, "w")
    stop = threading.Event()

    def write_log() -> None:  # what the detached engine's main thread does with every event
        while not stop.is_set():
            engine.wait_events(timeout=0.5)
            _print(engine.drain_events(), log)
            stop.wait(LOG_EVERY)

    writer = threading.Thread(target=write_log, daemon=True)
    writer.start()
    deadline = time.time() + 120
    while engine.core is None or engine.core.step < 20:
        if time.time() > deadline or engine.error:
            raise SystemExit(f"bench: the experiment did not start stepping ({engine.error})")
        time.sleep(0.1)
    measured = {label: [] for label in WINDOWS} | {f"cpu {label}": [] for label in WINDOWS}
    for _ in range(rounds):
        for label in WINDOWS:
            others = None
            if label == "busy":
                others = subprocess.Popen([sys.executable, "-c", BUSY], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                          text=True, preexec_fn=lambda: os.nice(19))
            elif label == "three":
                others = subprocess.Popen([sys.executable, __file__, "--consoles", str(socket_path(run_dir)), "3"],
                                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                others.stdout.readline()
            time.sleep(1.0)  # settle (snapshots sent)
            step0, time0, cpu0 = engine.core.step, time.perf_counter(), thread_cpu()
            other0 = process_cpu(f"/proc/{others.pid}/stat") if others else 0.0
            time.sleep(seconds)
            steps, elapsed, cpu1 = engine.core.step - step0, time.perf_counter() - time0, thread_cpu()
            if others is not None:
                cpu1[f"{label}'s other process"] = process_cpu(f"/proc/{others.pid}/stat") - other0
                others.stdin.close()
                others.wait(30)
            measured[label].append(elapsed / max(1, steps))
            measured[f"cpu {label}"].append({k: (v - cpu0.get(k, 0.0)) / max(1, steps) for k, v in cpu1.items()})
    stop.set()
    engine.shutdown(timeout=120)
    writer.join(5)
    log.close()
    torch.set_num_threads(threads)
    return measured


def print_step_windows(name: str, measured: dict) -> None:
    none, busy, three = (statistics.median(measured[label]) for label in WINDOWS)
    print(f"   {name}")
    print(f"     no console attached (alternative)  median {none * 1000:7.3f} ms/step   "
          f"windows {' '.join(f'{w * 1000:.2f}' for w in measured['none'])}")
    print(f"     none, a busy process beside        median {busy * 1000:7.3f} ms/step   "
          f"windows {' '.join(f'{w * 1000:.2f}' for w in measured['busy'])}   {100 * (busy / none - 1):+.1f} % "
          "(control: what activity beside the engine alone does on this machine)")
    print(f"     three consoles attached (ours)     median {three * 1000:7.3f} ms/step   "
          f"windows {' '.join(f'{w * 1000:.2f}' for w in measured['three'])}   {100 * (three / none - 1):+.1f} % "
          "(goal <= +2 %)")
    groups = sorted(set().union(*(measured[f"cpu {label}"][0] for label in WINDOWS)))
    for group in groups:
        cpu = [statistics.median(w.get(group, 0.0) for w in measured[f"cpu {label}"]) for label in WINDOWS]
        print(f"     CPU per step, {group:<26} none {cpu[0] * 1000:6.3f} ms   busy {cpu[1] * 1000:6.3f} ms   "
              f"three {cpu[2] * 1000:6.3f} ms")
    three_cpu = {g: statistics.median(w.get(g, 0.0) for w in measured["cpu three"]) for g in groups}
    serving = three_cpu.get("server writers", 0.0) + three_cpu.get("server readers, acceptor", 0.0)
    print(f"     the server's threads use {100 * serving / three_cpu['engine thread']:.1f} % of the engine thread's CPU "
          "(the engine process's work for three consoles, whatever the machine's load)")


def print_latency(local: list[float], remote: list[float], seconds: float) -> None:
    print(f"1. event latency engine -> client (ExperimentStep over {seconds:.0f} s: {len(local)} published, "
          f"{len(remote)} sent over the socket, where the newest step replaces one not yet sent)")
    for name, values in (("in-process drain (alternative)", local), ("socket client (ours)", remote)):
        print(f"   {name:<32} p50 {percentile(values, 0.5) * 1000:7.2f} ms   p95 {percentile(values, 0.95) * 1000:7.2f} ms")
    added = (percentile(remote, 0.95) - percentile(local, 0.95)) * 1000
    print(f"   the socket adds {added:.2f} ms at p95 (goal <= 20 ms)")


def consoles(path: str, count: int) -> int:
    """The other process of part 2: `count` attached consoles draining until stdin closes."""
    from console.engine_client import EngineClient

    for i in range(count):
        client = EngineClient(path, name=f"bench-{i}", control=False)
        client.start()
        Consumer(client, record=False).start()
    print("attached", flush=True)
    sys.stdin.read()
    return 0


class InProcess:
    """Today's in-process console on the bench's engine, without stopping it when the app ends."""

    def __init__(self, engine):
        self.engine = engine

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def start(self) -> None:
        pass  # already running

    def shutdown(self, timeout=None):
        return None


async def key_acks(source, experiment: str, samples: int, size=(160, 48)):
    """Seconds from key to acknowledgement shown (saves, emergency stops), and from the engine's answer
    to a save to its display, in the real app on `source`."""
    from console.app import RedlineApp
    from engine import commands as cmd
    from engine.events import EngineState

    app = RedlineApp(source, watch_terminal=False)
    saved: list[float] = []  # when each save's answer was put on screen
    saves, stops, delivered = [], [], []
    on_saved = app._saved

    def saved_hook(done, purpose=""):
        delivered.append(time.time() - done.time)  # the engine's answer -> shown: what the wake-up shortens
        on_saved(done, purpose)
        saved.append(time.perf_counter())

    app._saved = saved_hook
    async with app.run_test(size=size) as pilot:
        async def until(condition, what: str) -> None:
            deadline = time.monotonic() + 60
            while not condition():
                if time.monotonic() > deadline:
                    raise SystemExit(f"bench: gave up waiting for {what}")
                await pilot.pause(0.001)

        await pilot.pause(0.5)
        if app.state.engine_state is not EngineState.RUNNING:  # in-process: no snapshot; make the state known
            app.send(cmd.Pause())
            await until(lambda: app.state.engine_state is EngineState.PAUSED, "the pause")
            app.send(cmd.Resume())
        await until(lambda: app.state.engine_state is EngineState.RUNNING, "the experiment")
        for i in range(samples):
            await pilot.press("s")
            await until(lambda: app.main.save_prompt.is_open, "the save prompt")
            started = time.perf_counter()
            await pilot.press("enter")
            await until(lambda: len(saved) > i, "the save's answer")
            saves.append(saved[-1] - started)
            started = time.perf_counter()
            await pilot.press("ctrl+x")
            await until(lambda: app.state.engine_state is not EngineState.RUNNING, "the stop shown")
            stops.append(time.perf_counter() - started)
            await until(lambda: app.state.engine_state is EngineState.IDLE, "the rollback")
            app.send(cmd.RunExperiment(path=experiment))
            await until(lambda: app.state.engine_state is EngineState.RUNNING, "the experiment again")
        app.exit(0)
    return saves, stops, delivered


async def full_screen_attach(path, checkpoints: int, alerts: int) -> float:
    """Seconds from connecting to the checkpoint table and alert stream drawn in full."""
    from console.app import RedlineApp
    from console.engine_client import EngineClient

    started = time.perf_counter()
    client = EngineClient(path, name="bench-full", control=False)
    client.start()
    app = RedlineApp(client, watch_terminal=False)
    async with app.run_test(size=(160, 48)) as pilot:
        deadline = time.monotonic() + 120
        while not (len(app.state.checkpoints) >= checkpoints and app.main.checkpoints.row_count >= checkpoints
                   and any(e.text == f"bench alert {alerts - 1}" for e in app.state.stream)):
            if time.monotonic() > deadline:
                raise SystemExit("bench: the full screen never came")
            await pilot.pause(0.001)
        elapsed = time.perf_counter() - started
        app.exit(0)
    return elapsed


def attach_in_own_process(path, checkpoints: int, alerts: int) -> float:
    """full_screen_attach in a fresh process, as a console started by `redline attach` is: in this one its
    decoding and drawing would share a GIL with the engine's thread and its server encoding the snapshot."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_full_screen_attach_blocking, (str(path), checkpoints, alerts))


def _full_screen_attach_blocking(path: str, checkpoints: int, alerts: int) -> float:
    import asyncio

    return asyncio.run(full_screen_attach(Path(path), checkpoints, alerts))


def fill(engine, checkpoints: int, alerts: int) -> None:
    """Put `checkpoints` entries and `alerts` alerts into the engine's picture (as its events)."""
    from engine.events import Alert, CheckpointInfo, CheckpointList

    now = time.time()
    infos = tuple(CheckpointInfo(id=f"checkpoint_bench_{i:04d}", created=now - checkpoints + i, purpose=f"bench {i}",
                                 state="auto", size_bytes=1 << 20) for i in range(checkpoints))
    engine._events.publish(CheckpointList(checkpoints=infos, disk_usage=checkpoints << 20))
    for i in range(alerts):
        engine._events.publish(Alert(severity=("INFO", "LOW", "MEDIUM")[i % 3], message=f"bench alert {i}",
                                     source="bench"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--model", default=None, help="a model directory or 'demo' (default: a tiny Qwen2)")
    parser.add_argument("--samples", type=int, default=8, help="key presses of each kind per console and round")
    parser.add_argument("--rounds", type=int, default=4, help="alternations of part 2's windows (none, three)")
    parser.add_argument("--only", choices=("1", "2"), help="run part 1 or part 2 alone")
    parser.add_argument("--consoles", nargs=2, metavar=("SOCKET", "N"), help=argparse.SUPPRESS)
    parser.add_argument("--quick", action="store_true", help="3-second windows, 3 key presses (a smoke run)")
    parser.add_argument("--parts", default="3,4,5,6", help="which of parts 3-6 to run, e.g. 5,6 (default: all)")
    parser.add_argument("--trace", action="store_true",
                        help="parts 5 and 6: trace the console (REDLINE_TRACE) and print where each press's time went")
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.samples, args.rounds = min(args.seconds, 3.0), min(args.samples, 3), min(args.rounds, 2)
    if args.consoles:
        return consoles(args.consoles[0], int(args.consoles[1]))
    import subprocess

    from console.engine_client import EngineClient
    from engine.runtime import Engine, EngineConfig
    from engine.runtime.socket_paths import socket_path

    with tempfile.TemporaryDirectory(prefix="redline-bench-attach-") as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("XDG_RUNTIME_DIR", str(tmp))
        model = args.model or str(tiny_model(tmp / "model"))
        experiment = tmp / "experiment.py"
        experiment.write_text(EXPERIMENT)
        train = tmp / "train.py"
        train.write_text(TRAIN)

        # 2. step time (first, on engines of its own, while nothing else runs)
        steps = {} if args.only == "1" else {
            name: step_windows(model, tmp / f"steps-{path.stem}", path, args.seconds / 2, args.rounds)
            for name, path in (("toy step (multiply, 2 ms wait)", experiment), ("forward/backward of the tiny model", train))}
        if args.only == "2":
            print("2. engine step time")
            for name, measured in steps.items():
                print_step_windows(name, measured)
            return 0
        engine = Engine(EngineConfig(model=model, experiment=str(experiment), run_dir=tmp / "run", device="cpu",
                                     serve=True, auto_checkpoint_every=0, evaluate_every=0))
        engine.start()
        local = Consumer(engine)
        local.start()
        remote_client = EngineClient(socket_path(tmp / "run"), name="bench")
        remote_client.start()
        remote = Consumer(remote_client)
        remote.start()
        deadline = time.time() + 120
        while len(local.steps) < 10:
            if time.time() > deadline:
                raise SystemExit("bench: the experiment did not start stepping")
            time.sleep(0.1)

        # 1. latency, both consumers in the same window
        local.latencies.clear()
        remote.latencies.clear()
        time.sleep(args.seconds)
        lat_local, lat_remote = list(local.latencies), list(remote.latencies)
        for consumer in (local, remote):
            consumer.done.set()
        remote_client.shutdown()
        if args.only == "1":
            engine.shutdown(timeout=120)
            print_latency(lat_local, lat_remote, args.seconds)
            return 0

        parts = set(args.parts.split(","))
        results: list[str] = []
        if "3" in parts:
            results += pilot_keys(engine, tmp / "run", str(experiment), args.samples)
        if parts & {"5", "6"}:  # before 4 fills the engine
            results += terminal_parts(engine, tmp / "run", str(experiment), args.samples, tmp if args.trace else None)
        if "4" in parts:
            fill(engine, 1000, 10_000)
            attach_times = [attach_in_own_process(socket_path(tmp / "run"), 1000, 10_000) for _ in range(3)]
            results.append(f"4. attach to a full screen (1,000 checkpoints, 10,000 alerts): best {min(attach_times):.2f} s "
                           f"of {len(attach_times)}, worst {max(attach_times):.2f} s (goal <= 1 s)")
        engine.shutdown(timeout=120)

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print_latency(lat_local, lat_remote, args.seconds)
    print("2. engine step time")
    for name, measured in steps.items():
        print_step_windows(name, measured)
    print("\n".join(results))
    return 0


def ms(values: list[float]) -> str:
    return f"p50 {percentile(values, 0.5) * 1000:6.1f} ms  p95 {percentile(values, 0.95) * 1000:6.1f} ms"


def pilot_keys(engine, run_dir: Path, experiment: str, samples: int) -> list[str]:
    """3. alternating in-process (today) and attached consoles, under Pilot."""
    import asyncio

    from console.engine_client import EngineClient
    from engine.runtime.socket_paths import socket_path

    acks = {"in-process": ([], [], []), "attached": ([], [], [])}
    for _ in range(2):
        for label in ("in-process", "attached"):
            if label == "in-process":
                source = InProcess(engine)
            else:
                source = EngineClient(socket_path(run_dir), name="bench-keys")
                source.start()
            for kept, new in zip(acks[label], asyncio.run(key_acks(source, experiment, samples))):
                kept.extend(new)
            if label == "attached":
                source.shutdown()
    lines = [f"3. key -> acknowledgement on screen ({2 * samples} presses of each per console)"]
    rows = [("save (Enter -> 'saved')", 0), ("ctrl+x (key -> state shown)", 1),
            ("save: the engine's answer -> shown (the UI's share)", 2)]
    for key, index in rows:
        today, ours = acks["in-process"][index], acks["attached"][index]
        lines.append(f"   {key}")
        lines.append(f"      in-process console, 10 Hz poll (today): {ms(today)}")
        lines.append(f"      attached console, woken (ours):          {ms(ours)}  "
                     f"({percentile(ours, 0.95) / percentile(today, 0.95):.2f}x)")
    return lines


def terminal_parts(engine, run_dir: Path, experiment: str, samples: int, trace_dir: Path | None) -> list[str]:
    """5 and 6: save and ctrl+x in a real terminal, each beside its floor (the engine's own save; a bare
    socket round trip for the stop)."""
    from bench.attach_terminal import breakdown, keys_in_own_process
    from engine import commands as cmd
    from engine.events import CommandDone

    trace = trace_dir / "console-trace.txt" if trace_dir is not None else None

    def save_floor() -> float:
        engine.drain_events()
        started = time.perf_counter()
        command_id = engine.submit(cmd.Save(purpose="bench floor"))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(isinstance(e, CommandDone) and e.command_id == command_id for e in engine.drain_events()):
                return time.perf_counter() - started
            engine.wait_events(1.0)
        raise SystemExit("bench: the engine never answered its own save")

    times = keys_in_own_process(run_dir, samples, lambda: engine.submit(cmd.RunExperiment(path=experiment)),
                                save_floor, trace)
    lines = [f"5. save in a real terminal (`redline attach` in a 160x48 pty: Enter -> 'saved' drawn), {samples} saves",
             f"   the same Save in the engine's process (the floor)      {ms(times['save floor'])}",
             f"   attached console in a terminal (ours)                  {ms(times['save'])}  (goal <= 50 ms p95)",
             f"6. ctrl+x in a real terminal (160x48 pty), {samples} stops",
             f"   key -> state shown: the bare socket round trip (floor)  {ms(times['stop floor'])}",
             f"                       attached console (ours)             {ms(times['stop'])}  (goal <= 50 ms p95)",
             f"   key -> IDLE (rolled back): bare socket (floor)         {ms(times['idle floor'])}",
             f"                       attached console (ours)             {ms(times['idle'])}"]
    if trace is not None and trace.exists():
        lines += breakdown(trace, times["windows"])
    return lines


if __name__ == "__main__":
    sys.exit(main())
