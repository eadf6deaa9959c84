"""`RecoveryActions`: everything an emergency procedure may do to the engine, and nothing more.

The procedures in engine.runtime.emergency are given one of these (built by the
engine core) instead of the core itself, so what a recovery can touch is
written down here: alerts and state, the checkpoints, health and perplexity,
reloading the model, and the memory measures of the out-of-memory procedure.
"""

from __future__ import annotations

from typing import Any, Iterable

import torch

from engine.benchmarks import save_baseline_metrics
from engine.device_memory import FreedMemory, OutOfMemory, free_memory
from engine.events import EngineState
from engine.placement import move_to_cpu
from engine.store.metadata import checkpoint_metadata


class RecoveryActions:
    """The engine as an emergency procedure sees it; runs in the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore; reached only through the methods below

    # -- telling the operator ------------------------------------------------------------
    def alert(self, severity: str, message: str, source: str) -> None:
        self._core.alert(severity, message, source=source)

    def set_recovering(self, detail: str) -> None:
        self._core.set_state(EngineState.RECOVERING, detail)

    @property
    def step(self) -> int:
        return self._core.step

    @property
    def model_name(self) -> str:
        return self._core.config.model

    # -- checkpoints ---------------------------------------------------------------------
    @property
    def has_checkpoints(self) -> bool:
        return self._core.checkpoints is not None

    @property
    def may_keep_forensic(self) -> bool:
        """Whether a forensic checkpoint may be written (not read-only)."""
        return self.has_checkpoints and not self._core.config.readonly

    @property
    def forensic_enabled(self) -> bool:
        return bool(self._core.config.forensic_checkpoints)

    def list_checkpoints(self) -> list[dict]:
        return self._core.checkpoints.list_checkpoints()

    def save_checkpoint(self, state: str, purpose: str, *, health: str, tags: Iterable[str], hold: bool,
                        **extra: Any) -> str:
        return self._core.save_checkpoint(checkpoint_metadata(state, purpose, health=health, tags=tags, **extra),
                                          hold=hold)

    def restore(self, checkpoint_id: str) -> bool:
        return self._core.restore(checkpoint_id)

    @property
    def checkpoint_error(self) -> str | None:
        """Why the last checkpoint operation failed."""
        return self._core.checkpoints.last_error

    def hold(self, checkpoint_id: str) -> None:
        """Keep a checkpoint in memory for the next fast rollback."""
        self._core.checkpoints.hold_in_memory(checkpoint_id)

    def verify_checkpoint(self, checkpoint_id: str) -> bool:
        return self._core.checkpoints.verify_checkpoint(checkpoint_id)

    # -- health and perplexity -------------------------------------------------------------
    def scan_health(self) -> dict:
        return self._core.health.scan()

    def publish_health(self, result: dict) -> None:
        self._core.health.publish(result)

    def health_label(self) -> str:
        """A fresh health status, worsened by a bad perplexity (what a checkpoint records)."""
        return self._core.health.label()

    @property
    def thresholds(self) -> dict:
        return self._core.safety.thresholds

    @property
    def baseline_perplexity(self) -> float | None:
        return self._core.health.baseline_perplexity

    def evaluate_perplexity(self) -> float | None:
        """Measure and publish perplexity against the baseline (None without a baseline)."""
        return self._core.health.evaluate()

    def remeasure_perplexity(self) -> float:
        """Measure perplexity, record it as the latest and publish it."""
        health = self._core.health
        health.last_perplexity = health.measure_perplexity()
        health.publish(health.last_health or health.scan())
        return health.last_perplexity

    # -- the model -------------------------------------------------------------------------
    def reload_model(self) -> bool:
        """Reload the weights from disk and point every safety system at the result."""
        if not self._core.manager.reload():
            return False
        self._core.rebind_after_reload()
        self._core.health.perplexity_status = "OK"
        return True

    @property
    def model_error(self) -> str | None:
        return self._core.manager.error

    def record_new_baseline(self) -> float | None:
        """Benchmark the model as the new baseline, save the metrics; returns its perplexity (None: perplexity off)."""
        metrics = self._core.health.measure_baseline()
        if metrics is not None:
            save_baseline_metrics(metrics, self._core.run_dir / "baseline_metrics.json")
        self._core.detection.record_baseline("", fresh=True)
        return self._core.health.last_perplexity

    def nonfinite_parameters(self) -> list[str]:
        """Names of parameters holding NaN or Inf."""
        with torch.no_grad():
            return [name for name, param in self._core.model.named_parameters()
                    if not bool(torch.isfinite(param).all())]

    @property
    def on_cuda(self) -> bool:
        """Whether the model is on a CUDA device now (after a CPU fallback it is not)."""
        return getattr(self._core.device, "type", str(self._core.device)) == "cuda"

    def free_memory(self, caught: OutOfMemory | None = None) -> FreedMemory:
        """Collect garbage and empty the CUDA cache; what was freed since `caught` was caught."""
        return free_memory(caught)

    def move_model_to_cpu(self) -> None:
        """The CPU fallback: the model, the engine's device and the manager's (so a reload keeps it) go to the CPU."""
        move_to_cpu(self._core.model)  # a spread model's accelerate hooks go too
        free_memory()
        self._core.manager.device = torch.device("cpu")
        self._core.device = torch.device("cpu")
