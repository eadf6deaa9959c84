"""Detection policy: its cost per training step, and how many steps it needs to catch each failure.

For each model (tiny Qwen2, Llama and GPT-2 built untrained from configs, the
trained demo model, and two ~10M-parameter Qwen2s with a 32000-token vocabulary:
2 layers of width 256, where the bytes are, and 24 layers of width 128, where
the tensor count is) and each scenario of tests/detection_workloads.py, a real
fine-tune runs with the fused scan (`norms=True`) and `Detector.evaluate` after
every optimizer step. Columns:

- delay: steps from the onset to the first CRITICAL (0: caught at the step it
  happened); for "healthy", the number of HIGH and CRITICAL issues (goal: 0);
- rule: the rule that fired first (healthy: the largest departure ratio,
  update size and spike ratio seen, to show the margin below the defaults);
- detect %: Detector.evaluate plus the drift view (engine.detection.drift, at the
  engine's cadence) over the step's time, the median over the steps (goal <= 1 %;
  robust to the moments a loaded machine deschedules the process); exact %: the
  same with `update_size.sample = 0` (every element compared, as before the
  sample), evaluated on the same scans in alternating order; mean %: the
  total over the total, which such moments and the alerting step itself inflate;
- drift ms: one drift update that recomputes every tensor, after the run (its
  worst case, best of 3; the baseline is read from the checkpoint manager's held
  snapshot, so it keeps no copy of its own);
- scan %: the fused scan's time over the step's time (it runs anyway).

Then one row per model: its size, the median step and detection time of its
healthy run, detect % against the goal (<= 1 %), and the worst delay over the
failure scenarios.

    .venv/bin/python bench/policy.py [--quick] [--steps N] [--only TEXT]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from engine.detection import BaselineStats, Detector  # noqa: E402
from engine.checkpointing import CheckpointManager  # noqa: E402
from engine.detection.drift import Cadence, DriftTracker  # noqa: E402
from engine.health_scan import scan_model  # noqa: E402
from engine.policy import Policy  # noqa: E402
from engine.policy_file import apply_policy  # noqa: E402
from tests.detection_workloads import SCENARIOS, finetune  # noqa: E402

GOAL_COST = 0.01
ONSET = 10


def qwen2_10m(layers: int, width: int):
    """An untrained Qwen2 of about 10M parameters with a 32000-token vocabulary (tied embeddings)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=32000, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True)
    return Qwen2ForCausalLM(config).eval()


def models(quick: bool):
    from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2

    yield "qwen2 (untrained)", make_tiny_qwen2, 1e-3
    yield "llama (untrained)", make_tiny_llama, 1e-3
    yield "gpt2 (untrained)", make_tiny_gpt2, 1e-3
    if not quick:
        from transformers import AutoModelForCausalLM

        from engine.demo_model import ensure_demo_model

        path = ensure_demo_model()
        yield "demo (trained)", lambda: AutoModelForCausalLM.from_pretrained(path), 3e-4
        yield "qwen2 10M 2x256", lambda: qwen2_10m(2, 256), 1e-3
        yield "qwen2 10M 24x128", lambda: qwen2_10m(24, 128), 1e-3


def run(make, scenario: str, steps: int, lr: float) -> dict:
    model = make()
    with tempfile.TemporaryDirectory() as directory:
        manager = CheckpointManager(model, directory)
        return measure(model, manager, manager.save_checkpoint({"state": "baseline"}), scenario, steps, lr)


def measure(model, manager, baseline_id: str, scenario: str, steps: int, lr: float) -> dict:
    baseline = BaselineStats.from_scan(scan_model(model, norms=True))
    detector = Detector(model, baseline=baseline)
    exact = Detector(model, apply_policy(Policy.default(), {"rules": {"update_size": {"sample": 0}}}),
                     baseline=baseline)
    drift = DriftTracker(model, manager.tensor_reader(baseline_id), norm_floor_rms=baseline.rms_floor)
    cadence = Cadence()
    stats = {"first": None, "rule": "", "high": 0, "critical": 0, "step_s": 0.0, "scan_s": 0.0, "detect_s": 0.0,
             "steps": 0, "departure": 0.0, "update": 0.0, "drift_full": [], "ratios": [], "step_times": [],
             "detect_times": [], "exact_ratios": [], "params": sum(p.numel() for p in model.parameters()),
             "tensors": len(scan_model(model, grads=False).weights)}
    started = time.perf_counter()
    for step, loss in enumerate(finetune(model, scenario, steps, ONSET, lr=lr if scenario == "healthy" else None)):
        t0 = time.perf_counter()
        stats["step_s"] += t0 - started
        scan = scan_model(model, grads=True, norms=True)
        t1 = time.perf_counter()
        ours, alternative, issues = timed(detector, exact, step, scan, loss)
        d0 = time.perf_counter()
        if cadence.due:
            drift.update(scan)
            drift.by_layer()
            cadence.done(time.perf_counter() - d0)
        drift_s = time.perf_counter() - d0
        step_s = max(t0 - started, 1e-9)
        stats["scan_s"] += t1 - t0
        stats["detect_s"] += ours + drift_s
        stats["ratios"].append((ours + drift_s) / step_s)
        stats["exact_ratios"].append((alternative + drift_s) / step_s)
        stats["step_times"].append(step_s)
        stats["detect_times"].append(ours + drift_s)
        stats["steps"] += 1
        ratios = [max(r for r in baseline.ratios(s) if r == r) for s in scan.weights]
        stats["departure"] = max(stats["departure"], max(ratios, default=0.0))
        stats["update"] = max([stats["update"], *[v for _, v in detector.last_updates if v == v]])
        for issue in issues:
            if issue["severity"] in ("HIGH", "CRITICAL"):
                stats[issue["severity"].lower()] += 1
            if issue["severity"] == "CRITICAL" and stats["first"] is None:
                stats["first"], stats["rule"] = step, issue["rule"]
        if scenario != "healthy" and stats["first"] is not None:
            break
        started = time.perf_counter()
    for _ in range(3):  # drift's worst case: an update that recomputes every tensor (training wrote them all)
        drift.forget()
        d0 = time.perf_counter()
        drift.update(scan)
        stats["drift_full"].append(time.perf_counter() - d0)
    stats["spike"] = max((max(w.values) / max(min(w.values), 1e-12) for w in detector.series.windows.values()
                          if len(w)), default=0.0)
    return stats


def timed(detector: Detector, exact: Detector, step: int, scan, loss) -> tuple[float, float, list[dict]]:
    """Seconds of `detector.evaluate` and of `exact.evaluate` on the same scan (their order alternating by
    step), and the detector's issues."""
    seconds, issues = {}, {}
    for which in ((detector, exact) if step % 2 else (exact, detector)):
        t0 = time.perf_counter()
        issues[id(which)] = which.evaluate(step, scan, loss=loss)
        seconds[id(which)] = time.perf_counter() - t0
    return seconds[id(detector)], seconds[id(exact)], issues[id(detector)]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models only, 60 healthy steps")
    parser.add_argument("--steps", type=int, default=None, help="healthy fine-tune steps (default 200, quick 60)")
    parser.add_argument("--only", default="", help="only the models whose name contains this text")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, min(4, torch.get_num_threads())))
    healthy_steps = args.steps or (60 if args.quick else 200)
    print(f"{'model':<18} {'scenario':<10} {'delay':>6} {'rule / margins':<44} {'detect %':>8} {'exact %':>8} "
          f"{'mean %':>7} {'drift ms':>8} {'scan %':>7}")
    worst_cost, missed, false_alarms = 0.0, 0, 0
    summary = []
    for name, make, lr in models(args.quick):
        if args.only not in name:
            continue
        delays = []
        for scenario in SCENARIOS:
            steps = healthy_steps if scenario == "healthy" else ONSET + 6
            s = run(make, scenario, steps, lr)
            cost = statistics.median(s["ratios"])
            mean = s["detect_s"] / s["step_s"] if s["step_s"] else 0.0
            worst_cost = max(worst_cost, cost)
            if scenario == "healthy":
                delay = f"{s['high']}H/{s['critical']}C"
                rule = f"{s['steps']} st: dep {s['departure']:.2g}x upd {s['update']:.2g} spk {s['spike']:.2g}x"
                false_alarms += s["high"] + s["critical"]
            else:
                delay = "missed" if s["first"] is None else str(s["first"] - ONSET)
                rule = s["rule"]
                missed += s["first"] is None or s["first"] - ONSET > 2
                delays.append(None if s["first"] is None else s["first"] - ONSET)
            if scenario == "healthy":
                summary.append((name, s, cost, delays))
            drift_ms = f"{1000 * min(s['drift_full']):.2f}"
            exact = statistics.median(s["exact_ratios"])
            print(f"{name:<18} {scenario:<10} {delay:>6} {rule:<44} {100 * cost:>7.2f}% {100 * exact:>7.2f}% "
                  f"{100 * mean:>6.2f}% {drift_ms:>8} {100 * s['scan_s'] / s['step_s']:>6.1f}%", flush=True)
    print(f"\n{'model':<18} {'params':>7} {'tensors':>7} {'step ms':>8} {'detect ms':>9} {'detect %':>8} "
          f"{'exact %':>8} {'scan %':>7} {'delay':>6}  goal (detect <= {100 * GOAL_COST:.0f}%)")
    for name, s, cost, delays in summary:
        step = statistics.median(s["step_times"])
        scan = s["scan_s"] / s["step_s"] if s["step_s"] else 0.0
        delay = "missed" if None in delays else f"<= {max(delays, default=0)}"
        print(f"{name:<18} {s['params'] / 1e6:>6.2f}M {s['tensors']:>7} {1000 * step:>8.1f} "
              f"{1000 * statistics.median(s['detect_times']):>9.3f} {100 * cost:>7.2f}% "
              f"{100 * statistics.median(s['exact_ratios']):>7.2f}% {100 * scan:>6.1f}% "
              f"{delay:>6}  {'met' if cost <= GOAL_COST else 'NOT MET'}")
    ok = worst_cost <= GOAL_COST and not missed and not false_alarms
    print(f"worst detection cost {100 * worst_cost:.2f}% of a step (goal <= {100 * GOAL_COST:.0f}%); "
          f"missed or late (> 2 steps): {missed}; HIGH/CRITICAL on healthy runs: {false_alarms}"
          f" -> {'OK' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
