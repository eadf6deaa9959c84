"""Detector: every detection rule, once per step, with the policy's verdict attached.

Given the step's fused scan (made with `norms=True`), the loss and metrics the
experiment reported and the activation maxima, it returns issues in the safety
monitor's shape plus `rule` and `action`: baseline departure, per-step update
size, spikes in the gradient norm, loss, metrics and activations, non-finite
values, dead gradients, output collapse, and the escalation of HIGHs that
persist or grow. The caller (the engine, or a user's own training loop)
alerts them and carries out the strongest action.
"""

from __future__ import annotations

from typing import Mapping

import torch

from engine.detection.baseline_stats import BaselineStats, departure_issues
from engine.detection.escalation import Escalation
from engine.detection.rolling import DeadGradients, SeriesRules, collapse_issue, near_uniform
from engine.detection.update_size import UpdateSize, update_issues
from engine.health_scan import ScanResult
from engine.policy import Action, Policy, Severity

MAX_ISSUES_PER_RULE = 8  # per step; the worst first


class Detector:
    def __init__(self, model: torch.nn.Module, policy: Policy | None = None, *,
                 baseline: BaselineStats | None = None, vocab_size: int | None = None):
        self.policy = policy or Policy.default()
        self.model = model
        self.vocab_size = vocab_size if vocab_size is not None else _vocab_size(model)
        self.baseline = baseline
        p = self.policy.params
        self.series = SeriesRules(p["spike"])
        self.dead = DeadGradients(p["dead_gradients"]["history"])
        self.escalation = Escalation(p["escalation"]["persist_steps"], p["escalation"]["growth"])
        self.updates = UpdateSize(model, norm_floor_rms=baseline.rms_floor if baseline else 0.0,
                                  sample=int(p["update_size"]["sample"]))
        self.last_updates: list[tuple[str, float]] = []  # (tensor, ||dW||/||W||) of the last step's changes

    def set_baseline(self, baseline: BaselineStats) -> None:
        self.baseline = baseline
        self.updates.norm_floor_rms = baseline.rms_floor

    def on(self, rule: str) -> bool:
        return self.policy.enabled.get(rule, True)

    def evaluate(self, step: int, scan: ScanResult, *, loss: float | None = None,
                 metrics: Mapping[str, float] | None = None, activation_peaks: Mapping[str, float] | None = None,
                 monitor_issues: list[dict] = ()) -> list[dict]:
        """This step's issues (the detector's and `monitor_issues`), decided by the policy, worst first."""
        p = self.policy.params
        issues: list[dict] = []
        if self.baseline is not None and self.on("baseline_departure"):
            issues += departure_issues(scan, self.baseline, p["baseline_departure"]["high"],
                                       p["baseline_departure"]["critical"])[:MAX_ISSUES_PER_RULE]
        if self.on("update_size"):
            self.last_updates = self.updates.measure(scan)
            issues += update_issues(self.last_updates, p["update_size"]["high"],
                                    p["update_size"]["critical"])[:MAX_ISSUES_PER_RULE]
        collapse = loss is not None and self.on("output_collapse") and near_uniform(
            float(loss), self.vocab_size, p["output_collapse"]["margin"])
        loss_median = self.series.median("loss") if collapse else None  # before this loss joins the window
        for series, value, upward in self._series(scan, loss, metrics, activation_peaks):
            issue = self.series.observe(series, value, upward_only=upward)
            if issue is not None and (issue["rule"] == "nonfinite" or self.on("spike")):
                issues.append(issue)
        if scan.grads and self.on("dead_gradients"):
            issue = self.dead.observe(scan.grads)
            if issue is not None:
                issues.append(issue)
        if collapse:
            issue = collapse_issue(float(loss), loss_median, self.vocab_size,
                                   p["output_collapse"]["margin"], p["output_collapse"]["learned"])
            if issue is not None:
                issues.append(issue)
        decided = [self.policy.decide(i) for i in [*issues, *monitor_issues]]
        if self.on("escalation"):
            decided += [self.policy.decide(i) for i in self.escalation.judge(step, decided)]
        decided.sort(key=_rank, reverse=True)
        return decided

    @staticmethod
    def _series(scan, loss, metrics, activation_peaks):
        if scan.grads:
            yield "grad_norm", scan.grad_norm, True
        if loss is not None:
            yield "loss", loss, True
        for name, value in (metrics or {}).items():
            yield f"metric:{name}", value, False
        for name, value in (activation_peaks or {}).items():
            yield f"activation:{name}", value, True

    def forget_weights(self) -> None:
        """After a restore or a reload: update sizes and dead-gradient history start afresh; loss windows stay."""
        self.updates.forget()
        self.dead.forget()
        self.escalation.forget()


def _rank(issue: dict) -> tuple:
    return Action(issue.get("action", "alert")).rank, Severity.parse(issue["severity"])


def _vocab_size(model) -> int | None:
    size = getattr(getattr(model, "config", None), "vocab_size", None)
    return int(size) if isinstance(size, int) and size > 1 else None


def metric_values(loss, metrics: Mapping | None) -> tuple[float | None, dict[str, float]]:
    """The loss and metrics as floats (tensors read back once); ValueError naming a value that is not a number."""
    def number(name, value):
        if isinstance(value, torch.Tensor):
            if value.numel() != 1:
                raise ValueError(f"{name} must be a number or a one-element tensor, got a tensor of shape "
                                 f"{tuple(value.shape)}")
            return float(value.detach().float().item())
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)

    out = {str(k): number(f"metric {k!r}", v) for k, v in (metrics or {}).items()}
    return (None if loss is None else number("loss", loss)), out


__all__ = ["Detector", "metric_values"]
