"""Per-step update size ||W_t - W_(t-1)|| / ||W_(t-1)|| of each tensor that changed, from a fixed sample.

One huge edit (a rank-one "disabling" edit, a learning rate of 50) shows here
at the step it happens, with the tensor named, before any downstream symptom.
The ratio is measured on the sampled positions of engine.detection.sketch
(`sample` elements per tensor, the `update_size.sample` policy parameter; a
smaller tensor, or any with `sample = 0`, is compared whole and exactly), so a
step costs one gather of the samples and a few operations on them, whatever
the model's size. A change the sample can miss, a few elements moved a lot,
moves what the health scan measures anyway: the tensor's norm and max|w|.
Both changes are lower bounds of ||dW|| (|‖W_t‖ - ‖W_t-1‖| <= ‖dW‖, and
|max|W_t| - max|W_t-1|| <= max|dW| <= ‖dW‖), and the larger of the estimate
and the bounds is reported; the baseline rule judges the same max|w| against
the baseline.
"""

from __future__ import annotations

import math

import torch

from engine.detection.sketch import DEFAULT_SAMPLE, WeightSketch
from engine.health_scan import ScanResult


class UpdateSize:
    def __init__(self, model: torch.nn.Module, *, norm_floor_rms: float = 0.0, sample: int = DEFAULT_SAMPLE):
        self.sketch = WeightSketch(model, sample)
        self.norm_floor_rms = norm_floor_rms
        self.sample = self.sketch.new_sample()
        self.slot = 0  # the slot this step gathers into; the other holds the last step's sample
        self.before_norms: list[list[float]] | None = None  # per group, of the last sample; None: nothing yet
        self.last_stats: dict = {}  # name -> the scan's TensorStats at the last observation
        self.rows = [[(name, math.sqrt(k), math.sqrt(n), k < n) for name, k, n in zip(g.names, g.taken, g.numels)]
                     for g in self.sketch.groups]

    @property
    def exact(self) -> bool:
        """Whether every tensor is compared whole."""
        return all(not sampled for rows in self.rows for *_, sampled in rows)

    def measure(self, scan: ScanResult) -> list[tuple[str, float]]:
        """(name, relative change since the last call) for each tensor that changed; first call: none."""
        now, before = self.slot, 1 - self.slot
        self.sketch.gather(self.sample, now)
        stats = {s.name: s for s in scan.weights}
        last, self.last_stats = self.last_stats, stats
        was = self.before_norms
        if was is not None:
            for slots in self.sample.slots:  # no autograd on these buffers: no grad mode to switch
                slots[before].sub_(slots[now])  # in place: the change, without a buffer of its own
        # one norm call and one read-back per group: this sample's norms and the change's
        reads = [g.norms(slots).tolist() for g, slots in zip(self.sketch.groups, self.sample.slots)]
        self.before_norms = [read[now] for read in reads]
        self.slot = before  # the next gather overwrites the change
        if was is None:
            return []
        floor = self.norm_floor_rms
        out = []
        for rows, read, norms in zip(self.rows, reads, was):
            for (name, root_taken, root_numel, sampled), delta, norm in zip(rows, read[before], norms):
                relative = delta / max(norm, floor * root_taken, 1e-30)
                if sampled and name in last:  # the scans' lower bound, inlined: a loop over every tensor
                    scanned, scanned_before = stats.get(name), last[name]
                    if scanned is not None and scanned.norm is not None and scanned_before.norm is not None:
                        change = abs(scanned.norm - scanned_before.norm)
                        moved = abs(scanned.max_abs - scanned_before.max_abs)
                        bound = (moved if moved > change else change) / max(scanned_before.norm,
                                                                            floor * root_numel, 1e-30)
                        if bound > relative:
                            relative = bound
                if relative != 0.0:
                    out.append((name, relative))
        return out

    def forget(self) -> None:
        """After a restore: the next observation starts afresh (its change is not an update)."""
        self.before_norms = None
        self.last_stats = {}


def update_issues(changes: list[tuple[str, float]], high: float, critical: float) -> list[dict]:
    issues = []
    large = [item for item in changes if item[1] >= high]  # NaN (non-finite weights): the nonfinite rule's
    for name, relative in sorted(large, key=lambda item: -item[1]):
        severity = "CRITICAL" if relative >= critical else "HIGH"
        issues.append({
            "severity": severity, "source": "detection", "check": "update_size", "rule": "update_size",
            "layer": name, "value": relative, "threshold": critical if severity == "CRITICAL" else high,
            "message": f"{name} changed by {relative:.3g}x its norm in one step (||dW||/||W||)",
        })
    return issues
