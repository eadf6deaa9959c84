"""Drift from the baseline, per layer: the largest ||W - W0|| / ||W0|| among each layer's tensors.

It shows the operator where the surgery happens. Only tensors whose version
counter moved since the last computation are recomputed (torch bumps it on
every in-place write: optimizer steps, edits, restores), so an edit of one
matrix costs one subtraction. A write that bypasses the counter (a restore
copies bytes straight into host tensors) shows in the health scan's
per-tensor min, max and norm, which `update(scan)` compares too. The baseline values come from `read_baseline`
(the engine passes CheckpointManager.tensor_reader of the baseline
checkpoint: the held host snapshot's bytes when it has them, else that one
verified blob); nothing is kept between computations, so drift adds no
second copy of the model. A tensor's value counts for every layer that names
it: a tied embedding drifts in the embedding and in the head, both marked tied.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch

from engine.events import LayerDrift
from engine.health_scan import ScanResult, unique_named_tensors
from engine.policy import change_severity

#: name -> the tensor's values at the baseline (host or device; dtype and shape of the live tensor)
BaselineReader = Callable[[str], torch.Tensor]


def layer_of(name: str) -> str:
    """The layer a parameter belongs to: its path up to the first block index, else its module."""
    parts = name.split(".")
    for i, part in enumerate(parts[:-1]):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return ".".join(parts[:-1]) or name


class DriftTracker:
    """Per-tensor relative change from the baseline, kept up to date incrementally; grouped by layer on demand.

    A tensor that was all zero at the baseline (a zero-initialised bias) is judged against
    `norm_floor_rms` (the model's RMS, engine.detection.baseline_stats) instead of its own norm.
    """

    def __init__(self, model: torch.nn.Module, read_baseline: BaselineReader, *, norm_floor_rms: float = 0.0):
        self.model = model
        self.read_baseline = read_baseline
        self.norm_floor_rms = norm_floor_rms
        self.tensors: dict[str, torch.Tensor] = {}
        self.layers: dict[str, list[str]] = {}  # layer -> its tensors (first names), in model order
        self.tied: set[str] = set()  # layers holding a tensor another layer shares
        for name, aliases, tensor in unique_named_tensors(model.named_parameters(remove_duplicate=False)):
            if not tensor.is_floating_point() or not tensor.numel():
                continue
            self.tensors[name] = tensor
            owners = list(dict.fromkeys(layer_of(n) for n in (name, *aliases)))
            for layer in owners:
                self.layers.setdefault(layer, []).append(name)
            if aliases:
                self.tied.update(owners)
        self.versions: dict[str, tuple] = {}  # tensor -> (_version, scan stats) when last measured
        self.relative: dict[str, float] = {name: 0.0 for name in self.tensors}

    def signatures(self, scan: ScanResult | None) -> dict[str, tuple]:
        stats = {s.name: s for s in scan.weights} if scan is not None else {}
        out = {}
        for name, tensor in self.tensors.items():
            s = stats.get(name)
            out[name] = (tensor._version, *(repr(v) for v in ((s.minimum, s.maximum, s.norm) if s else ())))
        return out

    def update(self, scan: ScanResult | None = None) -> int:
        """Recompute the tensors written since the last call (by version counter, and by `scan`'s
        statistics when given: a health scan of the model as it is now); the number recomputed."""
        signatures = self.signatures(scan)
        names = [n for n, sig in signatures.items() if sig != self.versions.get(n)]
        if not names:
            return 0
        by_device: dict[torch.device, tuple[list[str], list[torch.Tensor]]] = {}
        with torch.no_grad():
            for name in names:
                tensor = self.tensors[name]
                held = self.read_baseline(name)
                base = held.to(tensor.device, non_blocking=True)
                norm = torch.linalg.vector_norm(base, dtype=torch.float32)
                # a copy made for this device is ours to subtract into; held bytes are never written
                diff = base.sub_(tensor.detach()) if base is not held else tensor.detach() - base
                pair = torch.stack([torch.linalg.vector_norm(diff, dtype=torch.float32), norm])
                del held, base, diff
                names_here, values = by_device.setdefault(tensor.device, ([], []))
                names_here.append(name)
                values.append(pair)
                self.versions[name] = signatures[name]
            for names_here, values in by_device.values():
                for name, (delta, norm) in zip(names_here, torch.stack(values).cpu().tolist()):
                    scale = norm if norm > 0 else self.norm_floor_rms * math.sqrt(self.tensors[name].numel())
                    self.relative[name] = delta / max(scale, 1e-30) if math.isfinite(delta) else math.inf
        return len(names)

    def by_layer(self) -> tuple[LayerDrift, ...]:
        """Each layer's largest relative change, its tensor, whether it is tied, and the policy's severity."""
        out = []
        for layer, names in self.layers.items():
            worst = max(names, key=lambda n: self.relative[n] if not math.isnan(self.relative[n]) else math.inf)
            value = self.relative[worst]
            severity = "INFO" if value == 0.0 else change_severity(value)
            out.append(LayerDrift(layer=layer, relative=value, tensor=worst if value else "",
                                  tied=layer in self.tied, severity=severity))
        return tuple(out)

    def forget(self) -> None:
        """Measure every tensor again at the next update (a new baseline, a reloaded model)."""
        self.versions.clear()


#: the share of the engine thread's time drift may take: the per-step rules take the rest of detection's 1 %
DRIFT_BUDGET = 0.0025


class Cadence:
    """When drift is next due: at most every `interval` seconds, and spaced so it takes at most `budget` of the time.

    Drift stays exact (a heat strip must show a few rows edited as surely as a dense change),
    so while every tensor moves (training) each update reads the whole model; the budget
    spaces those out (a 10M-parameter model on a CPU: about every 5 s), while an edit of a
    few tensors costs little and shows within the second.
    """

    def __init__(self, interval: float = 1.0, budget: float = DRIFT_BUDGET, clock: Callable[[], float] = time.monotonic):
        self.interval = interval
        self.budget = budget
        self.clock = clock
        self.next_at = 0.0

    @property
    def due(self) -> bool:
        return self.clock() >= self.next_at

    def done(self, seconds: float) -> None:
        self.next_at = self.clock() + max(self.interval, seconds / self.budget)
