"""Escalation: a HIGH that persists or grows becomes CRITICAL.

A rule that stays HIGH for `persist_steps` consecutive steps on the same
tensor or series, or whose value grows `growth` times over its first HIGH,
is no longer a warning: the run is diverging slowly. Only rules marked
`escalates` in engine.policy.RULES escalate.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.policy import RULES


@dataclass
class _Open:
    first_step: int
    last_step: int
    first_value: float | None
    steps: int = 1


class Escalation:
    def __init__(self, persist_steps: int, growth: float):
        self.persist_steps = int(persist_steps)
        self.growth = float(growth)
        self.open: dict[tuple, _Open] = {}

    def judge(self, step: int, issues: list[dict]) -> list[dict]:
        """CRITICAL issues for the HIGHs among `issues` (this step's) that persisted or grew."""
        out, seen = [], set()
        for issue in issues:
            rule = issue.get("rule", "")
            if issue.get("severity") != "HIGH" or not RULES.get(rule) or not RULES[rule].escalates:
                continue
            key = (rule, issue.get("check"), issue.get("layer"))
            if key in seen:
                continue
            seen.add(key)
            value = issue.get("value")
            value = float(value) if isinstance(value, (int, float)) else None
            entry = self.open.get(key)
            if entry is None or entry.last_step < step - 1:
                self.open[key] = _Open(step, step, value)
                continue
            if entry.last_step != step:
                entry.steps += 1
                entry.last_step = step
            reason = None
            if entry.steps >= self.persist_steps:
                reason = f"HIGH for {entry.steps} consecutive steps (since step {entry.first_step})"
            elif value is not None and entry.first_value and value >= self.growth * entry.first_value:
                reason = f"grew {value / entry.first_value:.3g}x since step {entry.first_step}"
            if reason:
                out.append({**issue, "severity": "CRITICAL", "check": "escalation", "rule": "escalation",
                            "escalated_rule": rule, "message": f"escalated: {issue['message']} -- {reason}"})
        for key in [k for k, e in self.open.items() if e.last_step < step - 1 and k not in seen]:
            del self.open[key]
        return out

    def forget(self) -> None:
        self.open.clear()
