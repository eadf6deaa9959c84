"""Attach benchmark: what serving consoles over the engine socket costs.

    .venv/bin/python bench/attach.py [--seconds S] [--model PATH|demo]

1. Event latency, engine -> client: while an experiment steps, the time from an
   ExperimentStep's creation (its `time` field) to its arrival, for a console
   attached over <run_dir>/engine.sock (console.engine_client) against the
   in-process consumer draining the Engine directly (the alternative), both in
   the same run. Goal: the socket adds <= 20 ms at p95.
2. Engine step time with three consoles attached (in another process, as real
   consoles are) against none, alternating windows in one run. Goal: <= 2 % slower.

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


def step_time(consumer: Consumer, since: float, until: float) -> float:
    """Mean seconds per engine step between two wall-clock times, from the steps the consumer saw."""
    window = [(t, s) for t, s in consumer.steps if since <= t <= until]
    if len(window) < 2:
        return float("nan")
    (t0, s0), (t1, s1) = window[0], window[-1]
    return (t1 - t0) / max(1, s1 - s0)


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each measuring window")
    parser.add_argument("--model", default=None, help="a model directory or 'demo' (default: a tiny Qwen2)")
    parser.add_argument("--consoles", nargs=2, metavar=("SOCKET", "N"), help=argparse.SUPPRESS)
    args = parser.parse_args()
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

        # 2. step time: alternate none / three extra consoles attached
        windows = {"none": [], "three": []}
        for _ in range(2):
            for label in ("none", "three"):
                others = None
                if label == "three":
                    others = subprocess.Popen([sys.executable, __file__, "--consoles", str(socket_path(tmp / "run")),
                                               "3"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
                    others.stdout.readline()
                time.sleep(1.0)  # settle (snapshots sent)
                since = time.time()
                time.sleep(args.seconds / 2)
                windows[label].append(step_time(local, since, time.time()))
                if others is not None:
                    others.stdin.close()
                    others.wait(30)
        for consumer in (local, remote):
            consumer.done.set()
        remote_client.shutdown()
        engine.shutdown(timeout=120)

    print(f"machine: {os.cpu_count()} cores, python {sys.version.split()[0]}")
    print(f"1. event latency engine -> client (ExperimentStep, {len(lat_remote)} events over {args.seconds:.0f} s)")
    for name, values in (("in-process drain (alternative)", lat_local), ("socket client (ours)", lat_remote)):
        print(f"   {name:<32} p50 {percentile(values, 0.5) * 1000:7.2f} ms   p95 {percentile(values, 0.95) * 1000:7.2f} ms")
    added = (percentile(lat_remote, 0.95) - percentile(lat_local, 0.95)) * 1000
    print(f"   the socket adds {added:.2f} ms at p95 (goal <= 20 ms)")
    none, three = statistics.mean(windows["none"]), statistics.mean(windows["three"])
    print("2. engine step time")
    print(f"   no console attached (alternative)  {none * 1000:7.3f} ms/step")
    print(f"   three consoles attached (ours)     {three * 1000:7.3f} ms/step   {100 * (three / none - 1):+.1f} % "
          "(goal <= +2 %)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
