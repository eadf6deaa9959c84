"""Emergency-stop latency: from Engine.emergency_stop() to the experiment halted.

The engine runs an experiment that does nothing but forward passes of the demo
model in a loop (no ctx.step() in it), so only the forward pre-hooks can stop it
quickly. The alternative a user would otherwise have is a stop flag checked
between forward passes (a step boundary): its latency is up to one whole
forward pass, which is measured here on the same model and batch.

The floor of our latency is the longest single computation between two module
boundaries (on CPU: the attention kernel between v_proj and o_proj), which
grows with batch x sequence length; --batch/--seq show that.

    .venv/bin/python bench/stop.py [--quick] [--model demo|PATH] [--trials N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GOAL_MS = 100.0

FORWARD_LOOP = """
    import time

    import torch

    def run(ctx):
        batch, seq = ctx.options["batch"], ctx.options["seq"]
        ids = torch.randint(0, 256, (batch, seq), device=ctx.device)
        with torch.no_grad():
            for _ in range(ctx.options["timed"]):
                started = time.perf_counter()
                ctx.model(input_ids=ids)
                if ids.is_cuda:
                    torch.cuda.synchronize()
                ctx.log(f"forward_ms {(time.perf_counter() - started) * 1000:.3f}")
            ctx.log("forwarding")
            while True:
                ctx.model(input_ids=ids)
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))
    return ordered[index]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer trials, smaller batch (smoke run)")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--trials", type=int, default=None)
    parser.add_argument("--verbose", action="store_true", help="print every latency")
    parser.add_argument("--batch", type=int, default=None, help="forward batch (default 8; --quick 4)")
    parser.add_argument("--seq", type=int, default=None, help="sequence length (default 128, the engine's evaluation length)")
    args = parser.parse_args(argv)
    trials = args.trials or (5 if args.quick else 20)
    batch = args.batch or (4 if args.quick else 8)
    seq = args.seq or 128

    import torch

    from engine.commands import RunExperiment
    from engine.events import EngineState, LogLine
    from engine.runtime import Engine, EngineConfig

    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"cuda {'yes: ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no'}")
    with tempfile.TemporaryDirectory(prefix="redline-bench-stop-") as tmp:
        experiment = Path(tmp) / "forward_loop.py"
        experiment.write_text(textwrap.dedent(FORWARD_LOOP))
        config = EngineConfig(model=args.model, experiment=None, run_dir=Path(tmp) / "run",
                              forensic_checkpoints=False, evaluate_every=0, auto_checkpoint_every=0,
                              stop_grace=30.0, experiment_options={"batch": batch, "seq": seq,
                                                                  "timed": 2 if args.quick else 3})
        engine = Engine(config)
        engine.start()

        def wait(condition, timeout=600.0):
            deadline = time.monotonic() + timeout
            while not condition():
                if time.monotonic() > deadline:
                    raise SystemExit(f"timed out; engine state {engine.state}, error {engine.error}")
                time.sleep(0.005)

        wait(lambda: engine.state in (EngineState.IDLE, EngineState.ERROR))
        if engine.state == EngineState.ERROR:
            print(f"engine failed to start: {engine.error}", file=sys.stderr)
            return 1
        core = engine.core
        forward_times: list[float] = []
        latencies = []
        for trial in range(trials):
            engine.drain_events()
            engine.submit(RunExperiment(path=str(experiment)))
            seen = []

            def forwarding():
                seen.extend(engine.drain_events())
                return any(isinstance(e, LogLine) and e.text == "forwarding" for e in seen)

            wait(forwarding)
            forward_times += [float(e.text.split()[1]) for e in seen
                              if isinstance(e, LogLine) and e.text.startswith("forward_ms")]
            forward = statistics.median(forward_times)
            time.sleep(0.05 + (trial % 5) * forward / 5000)  # land at different points of a forward pass
            halted_before = core.halted_at
            started = time.perf_counter()
            engine.emergency_stop("bench")
            wait(lambda: core.halted_at != halted_before)
            latencies.append((core.halted_at - started) * 1000)
            wait(lambda: engine.state == EngineState.IDLE and engine.outcome is not None)
        async_raises = core.supervisor.async_raises
        engine.shutdown()

    median, p95 = statistics.median(latencies), _percentile(latencies, 0.95)
    if args.verbose:
        print("latencies (ms):", " ".join(f"{v:.1f}" for v in sorted(latencies)))
    print(f"model {args.model}, forward batch {batch}x{seq}, {trials} stops, async exceptions used: {async_raises}")
    print(f"{'measure':<44}{'ours (ms)':>12}{'alternative (ms)':>18}{'ratio':>8}{'goal':>12}")
    print(f"{'stop latency, median':<44}{median:>12.1f}{forward / 2:>18.1f}{median / (forward / 2):>8.2f}"
          f"{'<= 100 ms':>12}")
    print(f"{'stop latency, p95':<44}{p95:>12.1f}{forward:>18.1f}{p95 / forward:>8.2f}{'<= 100 ms':>12}")
    print("alternative: a flag checked between forward passes (median wait half a pass, worst a whole pass)")
    print(f"goal {'met' if p95 <= GOAL_MS else 'NOT met'}: p95 {p95:.1f} ms vs {GOAL_MS:.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
