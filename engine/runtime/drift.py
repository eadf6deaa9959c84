"""The engine's drift view: per-layer drift from the baseline checkpoint, published as DriftMap events.

`DriftWatch.tick` runs on every health publish (each step, each idle scan)
but computes only when its cadence says so (engine.detection.drift.Cadence:
at most once a second, and never more than 0.25 % of the engine thread's time),
and publishes only when some tensor was written since the last computation.
"""

from __future__ import annotations

import time
from typing import Any

from engine.detection.drift import Cadence, DriftTracker
from engine.events import DriftMap

SOURCE = "drift"


class DriftWatch:
    def __init__(self, core: Any):
        self._core = core  # the EngineCore: model, checkpoints, detection, step, publish(), alert()
        self.baseline_id = ""
        self.tracker: DriftTracker | None = None
        self.cadence = Cadence()
        self.last: DriftMap | None = None

    def start(self, checkpoint_id: str) -> None:
        """Measure drift against this checkpoint from the next tick on ("" turns the view off)."""
        self.baseline_id = checkpoint_id
        self.tracker = None
        self.cadence.next_at = 0.0

    def tick(self) -> None:
        core = self._core
        if not self.baseline_id or core.checkpoints is None or not self.cadence.due:
            return
        started = time.perf_counter()
        first = self.tracker is None or self.tracker.model is not core.model
        try:
            if first:
                baseline = core.detection.detector.baseline if core.detection.detector else None
                self.tracker = DriftTracker(core.model, core.checkpoints.tensor_reader(self.baseline_id),
                                            norm_floor_rms=baseline.rms_floor if baseline else 0.0)
            recomputed = self.tracker.update(core.safety.last_scan if core.safety is not None else None)
        except Exception as exc:  # a view must never stop the run: say why it is off, once
            core.alert("MEDIUM", f"Drift view off: the baseline checkpoint {self.baseline_id} cannot be read "
                                 f"({type(exc).__name__}: {exc})", source=SOURCE)
            self.start("")
            return
        if recomputed or first:
            layers = self.tracker.by_layer()
            seconds = time.perf_counter() - started
            self.last = DriftMap(baseline=self.baseline_id, layers=layers, step=core.step,
                                 compute_ms=seconds * 1000.0, recomputed=recomputed)
            core.publish(self.last)
        self.cadence.done(time.perf_counter() - started)
