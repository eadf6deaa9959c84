"""The engine's view of model health: scans, perplexity against the baseline, HealthSnapshot events.

`HealthWatch` keeps the latest scan and perplexity, knows when the next scan
is due (every `health_interval` seconds while idle, paused or waiting), and
publishes every result with the gauges engine.gauges builds from it.
"""

from __future__ import annotations

import time
from typing import Any

from engine.benchmarks import run_benchmarks
from engine.events import HealthSnapshot
from engine.gauges import health_gauges

EVAL_TOKENS = 1024  # tokens per in-run perplexity measurement (kept small: it runs every few steps)
EVAL_SEQ_LEN = 128


class HealthWatch:
    """Health scans and perplexity of the engine's model; runs in the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore: its model, safety monitor, publish() and run-dir check
        self.baseline_metrics: dict | None = None
        self.last_health: dict | None = None
        self.last_perplexity: float | None = None
        self.perplexity_status = "OK"  # of the last measurement since the last restore
        self._unmeasurable = False  # measuring after a restore failed: not retried at every idle scan
        self.next_due = 0.0  # time.monotonic() of the next periodic scan

    @property
    def due(self) -> bool:
        return time.monotonic() >= self.next_due

    @property
    def baseline_perplexity(self) -> float | None:
        return float(self.baseline_metrics["perplexity"]) if self.baseline_metrics else None

    def scan(self) -> dict:
        """One health scan of the model (after checking the run directory still exists)."""
        core = self._core
        core.check_run_dir()
        result = core.safety.check_model_health(core.model)
        self.last_health = result
        self.next_due = time.monotonic() + core.config.health_interval
        return result

    def is_healthy(self) -> bool:
        return self.scan()["status"] != "CRITICAL"

    def label(self) -> str:
        """Health to record in a checkpoint's metadata: a fresh scan, worsened by a bad perplexity."""
        status = self.scan()["status"]
        if status == "OK" and self.perplexity_status != "OK":
            status = self.perplexity_status
        return status

    def publish(self, result: dict) -> None:
        baseline = self.baseline_metrics.get("perplexity") if self.baseline_metrics else None
        baseline = float(baseline) if baseline is not None else None
        core = self._core
        core.publish(
            HealthSnapshot(
                status=str(result.get("status", "OK")),
                nan_count=int(result.get("nan_count") or 0),
                inf_count=int(result.get("inf_count") or 0),
                max_abs_weight=float(result.get("max_abs_weight") or 0.0),
                grad_norm=result.get("grad_norm"),
                perplexity=self.last_perplexity,
                baseline_perplexity=baseline,
                device_memory_used=result.get("device_memory_used"),
                device_memory_total=result.get("device_memory_total"),
                host_memory_used=int(result.get("host_memory_used") or 0),
                host_memory_total=int(result.get("host_memory_total") or 0),
                issues=len(result.get("issues") or ()),
                scan_ms=float(result.get("scan_seconds") or 0.0) * 1000.0,
                step=core.step,
                gauges=health_gauges(result, perplexity=self.last_perplexity, baseline_perplexity=baseline,
                                     thresholds=core.safety.thresholds,
                                     perplexity_off="no tokenizer" if core.tokenizer is None else ""),
            )
        )
        core.drift.tick()

    def measure_baseline(self) -> dict | None:
        """Benchmark the model and make the result the baseline (and the latest perplexity); None without a tokenizer."""
        core = self._core
        if core.tokenizer is None:
            return None
        self.baseline_metrics = run_benchmarks(core.model, core.tokenizer, max_tokens=EVAL_TOKENS,
                                               seq_len=EVAL_SEQ_LEN)
        self.last_perplexity = float(self.baseline_metrics["perplexity"])
        return self.baseline_metrics

    def measure_perplexity(self) -> float:
        """Perplexity now, in batches of the running experiment's batch size (8 without one)."""
        ctx = self._core.runner.ctx
        metrics = run_benchmarks(self._core.model, self._core.tokenizer, max_tokens=EVAL_TOKENS,
                                 seq_len=EVAL_SEQ_LEN, batch_size=ctx.batch_size if ctx is not None else 8)
        return float(metrics["perplexity"])

    def measure_if_unknown(self) -> bool:
        """Idle after a restore that did not measure perplexity (an emergency stop's rollback, an automatic
        one that ended the experiment): measure it once, so the gauge shows the restored model's rather
        than "—" until the next experiment. True when it measured (and published)."""
        if self.last_perplexity is not None or not self.baseline_metrics or self._unmeasurable:
            return False
        try:
            self.evaluate()
        except Exception as exc:  # e.g. out of memory: say so once, keep serving
            self._unmeasurable = True
            self._core.alert("LOW", f"Could not measure perplexity after the restore: {type(exc).__name__}: {exc}")
            return False
        return True

    def evaluate(self) -> float | None:
        """Measure perplexity against the baseline, judge it (perplexity_status) and publish; None without a baseline."""
        if not self.baseline_metrics:
            return None
        perplexity = self.measure_perplexity()
        self.last_perplexity = perplexity
        verdict = self._core.safety.check_perplexity(perplexity, self.baseline_perplexity)
        self.perplexity_status = str(verdict.get("status", "OK"))
        self.publish(self.last_health or self.scan())
        return perplexity
