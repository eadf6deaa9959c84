"""Per-tensor statistics at the baseline checkpoint, and how far each tensor has departed from them.

Absolute limits (`max_weight_value`) miss a model whose weights are all small
and flag one whose weights are all large; a tensor judged against its own
baseline max|w| and RMS is independent of scale. Tensors whose baseline is
small, such as zero-initialised biases, are judged against floors: the RMS of
the whole model, and the median max|w| of the tensors that are not all zero
(which an all-zero tensor's RMS is judged against too), so a bias growing
from 0 to a normal weight's size is no departure. Stored as JSON in the run directory, so an engine
restarted on the same run keeps judging against the original baseline.
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass
from pathlib import Path

from engine.fsutil import atomic_write_text
from engine.health_scan import ScanResult, TensorStats

BASELINE_STATS_FILE = "baseline_stats.json"
FORMAT = 1


@dataclass(frozen=True)
class TensorBaseline:
    max_abs: float
    rms: float
    shape: tuple[int, ...]


def _rms(stats: TensorStats) -> float:
    if stats.norm is None or not stats.numel:
        return 0.0
    return stats.norm / math.sqrt(stats.numel)


class BaselineStats:
    """max|w| and RMS of every unique tensor at the baseline, with the floors near-zero tensors use."""

    def __init__(self, tensors: dict[str, TensorBaseline], checkpoint_id: str = ""):
        self.tensors = tensors
        self.checkpoint_id = checkpoint_id
        finite = [t for t in tensors.values() if math.isfinite(t.max_abs) and math.isfinite(t.rms)]
        nonzero = [t.max_abs for t in finite if t.max_abs > 0]
        self.max_abs_floor = statistics.median(nonzero) if nonzero else 0.0
        numel = sum(math.prod(t.shape) for t in finite)
        squares = sum(t.rms ** 2 * math.prod(t.shape) for t in finite)
        self.rms_floor = math.sqrt(squares / numel) if numel else 0.0
        #: name -> (what max|w| is divided by, what the RMS is divided by): ratio_of's floors, once
        self.scales = {name: (max(t.max_abs, self.max_abs_floor, 1e-30),
                              max(t.rms if t.max_abs > 0 else self.max_abs_floor, self.rms_floor, 1e-30))
                       for name, t in tensors.items()}

    @classmethod
    def from_scan(cls, scan: ScanResult, checkpoint_id: str = "") -> "BaselineStats":
        """From a scan made with `norms=True` (RMS needs each tensor's L2 norm)."""
        tensors = {}
        for s in scan.weights:
            if s.norm is None:
                raise ValueError("baseline statistics need a scan made with norms=True")
            entry = TensorBaseline(s.finite_max_abs, _rms(s), tuple(s.shape))
            for name in s.names:
                tensors[name] = entry
        return cls(tensors, checkpoint_id)

    def matches(self, scan: ScanResult) -> bool:
        """True when every scanned tensor has a baseline of the same shape (the same model)."""
        return all(
            (b := self.tensors.get(s.name)) is not None and b.shape == tuple(s.shape) for s in scan.weights
        ) and bool(scan.weights)

    def ratios(self, stats: TensorStats) -> tuple[float, float]:
        """(max|w| ratio, RMS ratio) of a tensor now against its baseline (floored); NaN if unknown."""
        return self.ratio_of(stats.name, stats.finite_max_abs, _rms(stats) if stats.norm is not None else math.nan)

    def ratio_of(self, name: str, max_abs: float, rms: float) -> tuple[float, float]:
        """(max|w| ratio, RMS ratio) of tensor `name` with these values against its baseline; NaN if unknown."""
        scale = self.scales.get(name)
        if scale is None:
            return math.nan, math.nan
        return max_abs / scale[0], rms / scale[1]

    def save(self, path: str | Path) -> None:
        data = {
            "format": FORMAT,
            "checkpoint_id": self.checkpoint_id,
            "tensors": {n: {"max_abs": t.max_abs, "rms": t.rms, "shape": list(t.shape)} for n, t in self.tensors.items()},
        }
        atomic_write_text(path, json.dumps(data, indent=1, default=str))

    @classmethod
    def load(cls, path: str | Path) -> "BaselineStats | None":
        """The statistics saved at `path`; None when missing, unreadable or of another format."""
        try:
            data = json.loads(Path(path).read_text())
            if data.get("format") != FORMAT:
                return None
            tensors = {n: TensorBaseline(float(t["max_abs"]), float(t["rms"]), tuple(t["shape"]))
                       for n, t in data["tensors"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return cls(tensors, str(data.get("checkpoint_id", "")))


def departure_issues(scan: ScanResult, baseline: BaselineStats, high: float, critical: float) -> list[dict]:
    """One issue per tensor whose max|w| or RMS is `high` (HIGH) or `critical` (CRITICAL) times its baseline."""
    issues = []
    scales = baseline.scales
    for s in scan.weights:  # ratios(s), inlined: this loop runs over every tensor at every step
        scale = scales.get(s.name)
        if scale is None:
            continue
        max_ratio = s.finite_max_abs / scale[0]
        rms_ratio = s.norm / math.sqrt(s.numel) / scale[1] if s.norm is not None and s.numel else 0.0
        if max_ratio < high and rms_ratio < high:
            continue  # most tensors at most steps
        if math.isnan(rms_ratio):
            rms_ratio = 0.0  # no norm, or a non-finite one: judged by max|w| here, by the nonfinite rule there
        ratio = max(max_ratio, rms_ratio)
        if not ratio >= high:  # NaN (non-finite values) is judged by the nonfinite rule
            continue
        severity = "CRITICAL" if ratio >= critical else "HIGH"
        base = baseline.tensors[s.name]
        which = "max|w|" if max_ratio >= rms_ratio else "RMS"
        now = s.finite_max_abs if which == "max|w|" else _rms(s)
        was = base.max_abs if which == "max|w|" else base.rms
        label = s.name + (f" (also {', '.join(s.aliases)})" if s.aliases else "")
        issues.append({
            "severity": severity, "source": "detection", "check": "baseline_departure", "rule": "baseline_departure",
            "layer": s.name, "value": ratio, "threshold": critical if severity == "CRITICAL" else high,
            "message": f"{label}: {which} {now:.4g} is {ratio:.3g}x its baseline {was:.4g}",
        })
    issues.sort(key=lambda i: i["value"], reverse=True)
    return issues
