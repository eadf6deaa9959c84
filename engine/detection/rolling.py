"""Rolling rules over what a run produces, one value per step per series.

A series (the gradient norm, the loss, a metric the experiment reports, a
block's activation maximum) is judged against a robust window of its own
recent values: the median and the MAD, as OLMo's skip-step rule and
Lightning's SpikeDetection do with mean and deviation, but robust to the
outliers it is looking for. A spike must be both improbable (robust z-score)
and material (a ratio over the median), so the noise of an early, small
window does not alert. CRITICAL values never enter the window, so one
explosion does not become the new normal; a level shift that is only HIGH
does, and stops alerting as the window fills with it.

Also here: non-finite values, gradients that die (non-zero, then exactly
zero), and output collapse (the loss back at ln(vocab) after the model had
learned).
"""

from __future__ import annotations

import collections
import math
import statistics
from typing import Iterable, Mapping

from engine.health_scan import GradStats

_MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation
_RELATIVE_SIGMA_FLOOR = 1e-3  # a perfectly flat window still tolerates noise of 0.1% of its median


def _issue(severity: str, check: str, rule: str, series: str, message: str, **extra) -> dict:
    return {"severity": severity, "source": "detection", "check": check, "rule": rule, "layer": series,
            "message": message, **extra}


class RobustWindow:
    """The last `size` values of a series, with their median and MAD."""

    def __init__(self, size: int):
        self.values: collections.deque[float] = collections.deque(maxlen=int(size))

    def __len__(self) -> int:
        return len(self.values)

    def add(self, value: float) -> None:
        self.values.append(value)

    def median_sigma(self) -> tuple[float, float]:
        """(median, robust standard deviation) of the window; the deviation is floored relative to the median."""
        median = statistics.median(self.values)
        mad = statistics.median(abs(v - median) for v in self.values)
        return median, max(_MAD_TO_SIGMA * mad, _RELATIVE_SIGMA_FLOOR * abs(median), 1e-12)


class SeriesRules:
    """Spike and non-finite rules for named series; `observe` once per step per series."""

    def __init__(self, params: Mapping[str, float]):
        self.params = dict(params)
        self.windows: dict[str, RobustWindow] = {}

    def window(self, series: str) -> RobustWindow:
        if series not in self.windows:
            self.windows[series] = RobustWindow(int(self.params["window"]))
        return self.windows[series]

    def observe(self, series: str, value: float, *, upward_only: bool = True) -> dict | None:
        """Judge `value` against the series' window, then add it unless it was CRITICAL."""
        value = float(value)
        if not math.isfinite(value):
            return _issue("CRITICAL", "nonfinite_series", "nonfinite", series, f"{series} is {value}", value=value)
        window = self.window(series)
        issue = None
        if len(window) >= self.params["warmup"]:
            issue = self._spike(series, value, window, upward_only)
        if issue is None or issue["severity"] != "CRITICAL":
            window.add(value)
        return issue

    def _spike(self, series: str, value: float, window: RobustWindow, upward_only: bool) -> dict | None:
        median = statistics.median(window.values)
        deviation = value - median
        if upward_only and deviation <= 0:
            return None
        ratio = 1.0 + abs(deviation) / abs(median) if median else math.inf
        if ratio < self.params["high_ratio"]:
            return None  # not material: the deviation need not be measured (most steps end here)
        median, sigma = window.median_sigma()
        z = abs(deviation) / sigma
        if z < self.params["z"]:
            return None
        severity = "CRITICAL" if ratio >= self.params["critical_ratio"] else "HIGH"
        return _issue(severity, "spike", "spike", series,
                      f"{series} spiked to {value:.4g}: {ratio:.3g}x away from its rolling median {median:.4g} "
                      f"(robust z {z:.3g}, window {len(window)})",
                      value=ratio, threshold=self.params["critical_ratio" if severity == "CRITICAL" else "high_ratio"])

    def median(self, series: str) -> float | None:
        window = self.windows.get(series)
        return statistics.median(window.values) if window and len(window) else None

    def forget(self) -> None:
        self.windows.clear()


class DeadGradients:
    """Parameters whose gradient was non-zero for `history` observations, then exactly zero."""

    def __init__(self, history: int):
        self.history = int(history)
        self.nonzero: dict[str, int] = {}
        self.settled: tuple[str, ...] | None = None  # the names, when each has `history` non-zero observations

    def observe(self, grads: Iterable[GradStats]) -> dict | None:
        """Judge this step's gradients; a parameter without a gradient now (None) starts its history afresh."""
        grads = list(grads)
        if self.settled is not None and all(g.norm != 0.0 for g in grads) and \
                self.settled == tuple(g.name for g in grads):
            return None  # the usual step: the same gradients, all non-zero, every count already at `history`
        self.settled = None
        present = {g.name for g in grads}
        for name in [n for n in self.nonzero if n not in present]:
            del self.nonzero[name]
        died = []
        for g in grads:
            if not math.isfinite(g.norm):
                continue  # the nonfinite rule reports it
            if g.norm == 0.0:
                if self.nonzero.get(g.name, 0) >= self.history:
                    died.append(g.name)
                self.nonzero[g.name] = 0
            else:
                self.nonzero[g.name] = self.nonzero.get(g.name, 0) + 1
        if all(self.nonzero.get(g.name, 0) >= self.history for g in grads):
            self.settled = tuple(g.name for g in grads)
        if not died:
            return None
        shown = ", ".join(died[:4]) + (f" (+{len(died) - 4} more)" if len(died) > 4 else "")
        return _issue("CRITICAL", "dead_gradients", "dead_gradients", died[0],
                      f"gradients died: {len(died)} parameter(s) had non-zero gradients, now exactly zero: {shown}",
                      value=float(len(died)), tensors=died)

    def forget(self) -> None:
        self.nonzero.clear()
        self.settled = None


def near_uniform(loss: float, vocab_size: int | None, margin: float) -> bool:
    """Whether `loss` is within `margin` (a fraction) of ln(vocab), the loss of a uniform output."""
    if not vocab_size or vocab_size < 2 or not math.isfinite(loss):
        return False
    return abs(loss - math.log(vocab_size)) <= margin * math.log(vocab_size)


def collapse_issue(loss: float, loss_median: float | None, vocab_size: int | None,
                   margin: float, learned: float) -> dict | None:
    """CRITICAL when the loss sits at ln(vocab) (a uniform output) after its median was well below it."""
    if not vocab_size or vocab_size < 2 or loss_median is None or not math.isfinite(loss):
        return None
    uniform = math.log(vocab_size)
    if loss_median > learned * uniform or abs(loss - uniform) > margin * uniform:
        return None
    return _issue("CRITICAL", "output_collapse", "output_collapse", "loss",
                  f"output collapsed: loss {loss:.4g} is ln(vocab) = {uniform:.4g} (a uniform output); "
                  f"it was {loss_median:.4g}", value=loss, threshold=uniform)
