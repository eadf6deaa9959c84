"""Every threshold, severity and severity rule, defined once.

The safety monitor, the emergency procedures, the health gauges and the
checkpoint comparison all read this module; the console only shows the
severity the engine attached to a value and never decides one. Imports no
torch (a console-only install uses it).
"""

from __future__ import annotations

import enum
import logging
import math
from dataclasses import dataclass, field
from numbers import Real
from typing import Iterable, Mapping


class Severity(enum.IntEnum):
    """CRITICAL > HIGH > MEDIUM > LOW > INFO."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name

    @property
    def log_level(self) -> int:
        """The `logging` level an alert of this severity is logged at."""
        return _LOG_LEVELS[self]

    @classmethod
    def parse(cls, value: "Severity | str") -> "Severity":
        """A Severity, its name in any case ('critical', ' HIGH '), or an enum's repr ('Severity.HIGH')."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper().split(".")[-1]]
            except KeyError:
                pass
        known = ", ".join(s.name for s in sorted(cls, reverse=True))
        raise ValueError(f"unknown severity {value!r}; use one of {known}")


_LOG_LEVELS = {
    Severity.CRITICAL: logging.CRITICAL,
    Severity.HIGH: logging.ERROR,
    Severity.MEDIUM: logging.WARNING,
    Severity.LOW: logging.INFO,
    Severity.INFO: logging.DEBUG,
}

#: severity names, worst first (the order filters and keys 1-5 use)
SEVERITIES: tuple[str, ...] = tuple(s.name for s in sorted(Severity, reverse=True))


def status_for(severities: Iterable["Severity | str"]) -> str:
    """The check status for a set of issue severities: CRITICAL, WARNING (HIGH/MEDIUM) or OK."""
    worst = max((Severity.parse(s) for s in severities), default=Severity.INFO)
    if worst >= Severity.CRITICAL:
        return "CRITICAL"
    if worst >= Severity.MEDIUM:
        return "WARNING"
    return "OK"


#: how a check status is shown (the status gauge, the header)
STATUS_SEVERITY = {"CRITICAL": "CRITICAL", "WARNING": "MEDIUM", "OK": "INFO"}

#: how an engine state is shown (keyed by EngineState's value)
STATE_SEVERITY = {
    "error": "CRITICAL",
    "stopping": "CRITICAL",
    "recovering": "HIGH",
    "paused": "MEDIUM",
    "running": "LOW",
}

#: how a checkpoint is shown by the "state" its metadata records; other states show plain
CHECKPOINT_STATE_SEVERITY = {"forensic": "HIGH", "emergency": "HIGH", "baseline": "LOW"}


def status_severity(status: str) -> str:
    """The severity a check status is shown with; an unknown status shows as HIGH."""
    return STATUS_SEVERITY.get(status, "HIGH")


# -- thresholds ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Threshold:
    """A named, settable threshold (`SafetyMonitor.set_threshold`)."""

    default: float
    low: float  # smallest accepted value
    high: float | None  # largest accepted value, None: unbounded
    integer: bool
    meaning: str


THRESHOLDS: dict[str, Threshold] = {
    "nan_tolerance": Threshold(0, 0, None, True, "NaN values a check tolerates before CRITICAL"),
    "inf_tolerance": Threshold(0, 0, None, True, "Inf values a check tolerates before CRITICAL"),
    "max_weight_value": Threshold(100.0, 0, None, False, "largest |weight| before HIGH"),
    "gradient_clip": Threshold(10.0, 0, None, False, "total gradient L2 norm before HIGH"),
    "device_memory_fraction": Threshold(0.90, 0, 1, False, "accelerator memory used fraction before HIGH"),
    "host_memory_fraction": Threshold(0.90, 0, 1, False, "machine RAM used fraction before HIGH"),
    "activation_spike_factor": Threshold(10.0, 1, None, False, "max|activation| over its baseline before HIGH"),
    "activation_warmup": Threshold(3, 0, None, True, "forward calls before activation baselines are trusted"),
    "perplexity_drift": Threshold(0.05, 0, None, False, "relative perplexity rise reported as LOW"),
    "perplexity_warning": Threshold(0.20, 0, None, False, "relative perplexity rise before HIGH"),
    "perplexity_critical": Threshold(0.50, 0, None, False, "relative perplexity rise before CRITICAL (rollback)"),
}


def default_thresholds() -> dict[str, float]:
    return {name: spec.default for name, spec in THRESHOLDS.items()}


def validate_threshold(name: str, value: object) -> float:
    """`value` checked against the named threshold's range (int for whole-number ones); ValueError names the problem."""
    spec = THRESHOLDS.get(name)
    if spec is None:
        known = "\n".join(f"  {n} (default {s.default}): {s.meaning}" for n, s in THRESHOLDS.items())
        raise ValueError(f"unknown threshold {name!r}; known thresholds:\n{known}")
    if isinstance(value, bool) or not isinstance(value, Real):
        raise ValueError(f"threshold {name!r} ({spec.meaning}) must be a number, got {value!r}")
    number = float(value)
    if math.isnan(number) or number < spec.low or (spec.high is not None and number > spec.high):
        bounds = f">= {spec.low}" if spec.high is None else f"between {spec.low} and {spec.high}"
        raise ValueError(f"threshold {name!r} ({spec.meaning}) must be {bounds}, got {value!r}")
    if spec.integer and math.isfinite(number):
        if not number.is_integer():
            raise ValueError(f"threshold {name!r} ({spec.meaning}) must be a whole number, got {value!r}")
        return int(number)
    return number


def _threshold(thresholds: Mapping[str, float] | None, name: str) -> float:
    return float((thresholds or {}).get(name, THRESHOLDS[name].default))


# -- rules -----------------------------------------------------------------------------------


def perplexity_change(perplexity: float, baseline: float) -> float:
    """Relative rise over the baseline; +inf for a non-finite perplexity."""
    return perplexity / baseline - 1.0 if math.isfinite(perplexity) else math.inf


def perplexity_severity(perplexity: float | None, baseline: float | None,
                        thresholds: Mapping[str, float] | None = None) -> str:
    """LOW above the drift threshold, HIGH above the warning one, CRITICAL above the critical one or non-finite."""
    if perplexity is None or not baseline:
        return "INFO"
    if math.isnan(perplexity):
        return "CRITICAL"
    change = perplexity_change(perplexity, baseline)
    if change > _threshold(thresholds, "perplexity_critical"):
        return "CRITICAL"
    if change > _threshold(thresholds, "perplexity_warning"):
        return "HIGH"
    if change > _threshold(thresholds, "perplexity_drift"):
        return "LOW"
    return "INFO"


def perplexity_acceptable(perplexity: float | None, baseline: float,
                          thresholds: Mapping[str, float] | None = None) -> bool:
    """Whether a restored model's perplexity is good enough to keep (not CRITICAL)."""
    return perplexity is not None and perplexity_severity(perplexity, baseline, thresholds) != "CRITICAL"


def nonfinite_severity(nan_count: int, inf_count: int, thresholds: Mapping[str, float] | None = None) -> str:
    over = nan_count > _threshold(thresholds, "nan_tolerance") or inf_count > _threshold(thresholds, "inf_tolerance")
    return "CRITICAL" if over else "INFO"


def max_weight_severity(max_abs: float, thresholds: Mapping[str, float] | None = None) -> str:
    if not math.isfinite(max_abs):
        return "CRITICAL"
    return "HIGH" if max_abs > _threshold(thresholds, "max_weight_value") else "INFO"


def gradient_severity(grad_norm: float | None, thresholds: Mapping[str, float] | None = None) -> str:
    if grad_norm is None:
        return "INFO"
    if not math.isfinite(grad_norm):
        return "CRITICAL"
    return "HIGH" if grad_norm > _threshold(thresholds, "gradient_clip") else "INFO"


def memory_severity(used: int | None, total: int | None, threshold_name: str,
                    thresholds: Mapping[str, float] | None = None) -> str:
    if not used or not total:
        return "INFO"
    return "HIGH" if used / total > _threshold(thresholds, threshold_name) else "INFO"


#: relative change of one tensor between two states (a checkpoint comparison), worst first
CHANGE_SEVERITY_STEPS: tuple[tuple[float, str], ...] = ((0.5, "CRITICAL"), (0.1, "HIGH"), (0.01, "MEDIUM"))


def change_severity(relative: float, change: float = 0.0) -> str:
    """How a tensor's change between two states is judged; a non-finite change or ratio is CRITICAL."""
    if not (math.isfinite(relative) and math.isfinite(change)):
        return "CRITICAL"
    for limit, severity in CHANGE_SEVERITY_STEPS:
        if relative > limit:
            return severity
    return "LOW"


# -- rules and actions -----------------------------------------------------------------------


class Action(str, enum.Enum):
    """What the engine does when a rule fires, mildest first."""

    ALERT = "alert"  # record and show the alert, nothing else
    PAUSE = "pause"  # hold the experiment at its next step() until the operator resumes
    ROLLBACK = "rollback"  # stop the experiment and restore the newest good checkpoint
    STOP = "stop"  # emergency stop: forensic checkpoint, roll back, experiment stays stopped

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        return list(Action).index(self)


@dataclass(frozen=True)
class Rule:
    """One detection rule: what it watches, its own thresholds, and the action per severity."""

    meaning: str
    params: Mapping[str, Threshold]
    actions: Mapping[str, Action]  # severity name -> action; a severity not listed only alerts
    escalates: bool = False  # a HIGH of this rule that persists or grows becomes CRITICAL


_ON_CRITICAL = {"CRITICAL": Action.ROLLBACK}

#: every rule, its parameters (defaults measured, see bench/policy.py) and its default actions
RULES: dict[str, Rule] = {
    "nonfinite": Rule("NaN or Inf in weights, gradients, activations, the loss or a metric", {}, _ON_CRITICAL),
    "max_weight_value": Rule("largest |weight| above the absolute threshold max_weight_value", {}, _ON_CRITICAL,
                             escalates=True),
    "gradient_clip": Rule("total gradient norm above the absolute threshold gradient_clip", {}, _ON_CRITICAL),
    "baseline_departure": Rule(
        "a tensor's max|w| or RMS against its own value at the baseline checkpoint",
        {"high": Threshold(10.0, 1, None, False, "ratio to the tensor's baseline before HIGH"),
         "critical": Threshold(100.0, 1, None, False, "ratio to the tensor's baseline before CRITICAL")},
        _ON_CRITICAL, escalates=True),
    "update_size": Rule(
        "one step's change of a tensor, ||dW|| / ||W||",
        {"high": Threshold(0.5, 0, None, False, "relative change in one step before HIGH"),
         "critical": Threshold(2.0, 0, None, False, "relative change in one step before CRITICAL"),
         "sample": Threshold(256, 0, None, True, "elements per tensor compared, at fixed positions "
                             "(0: all, exact, holding two copies of the weights)")},
        _ON_CRITICAL, escalates=True),
    "spike": Rule(
        "gradient norm, loss, a reported metric or an activation maximum against its rolling median/MAD",
        {"window": Threshold(32, 4, None, True, "values in the rolling window"),
         "warmup": Threshold(8, 2, None, True, "values seen before spikes are judged"),
         "z": Threshold(6.0, 0, None, False, "robust z-score (deviation / (1.4826 MAD)) a spike needs"),
         "high_ratio": Threshold(3.0, 1, None, False, "value over the window median before HIGH"),
         "critical_ratio": Threshold(10.0, 1, None, False, "value over the window median before CRITICAL")},
        _ON_CRITICAL, escalates=True),
    "dead_gradients": Rule(
        "gradients that were non-zero, then exactly zero",
        {"history": Threshold(3, 1, None, True, "non-zero observations before a zero one counts")},
        _ON_CRITICAL),
    "output_collapse": Rule(
        "the loss back at ln(vocab), a uniform output, after the model had learned",
        {"margin": Threshold(0.02, 0, 1, False, "loss within this fraction of ln(vocab) is collapse"),
         "learned": Threshold(0.9, 0, 1, False, "the loss median must have been below this fraction of ln(vocab)")},
        _ON_CRITICAL),
    "escalation": Rule(
        "a HIGH that persists or grows becomes CRITICAL",
        {"persist_steps": Threshold(5, 1, None, True, "consecutive steps a HIGH may last"),
         "growth": Threshold(10.0, 1, None, False, "growth of a HIGH's value over its first one")},
        _ON_CRITICAL),
    "activation_spike": Rule("max|activation| of a block over its moving baseline (activation_spike_factor)",
                             {}, _ON_CRITICAL),
    "perplexity": Rule("perplexity against the baseline (perplexity_* thresholds)", {}, _ON_CRITICAL),
    "memory": Rule("device or host memory use (*_memory_fraction thresholds)", {}, {}),
    "edit_checkpoint": Rule(
        "an incremental checkpoint when an edit (engine.edits) commits, tagged with the edit's id",
        {"every": Threshold(0, 0, None, True, "committed edits between checkpoints (0: not by count)"),
         "above": Threshold(0.5, 0, None, False, "a touched tensor's ||dW||/||W|| that checkpoints (0: never)")},
        {}),
}

#: the safety monitor's check names, by the rule they belong to
_CHECK_RULES = {
    "nan": "nonfinite", "inf": "nonfinite", "nan_more": "nonfinite", "inf_more": "nonfinite",
    "grad_nan": "nonfinite", "grad_inf": "nonfinite", "grad_nonfinite": "nonfinite", "grad_nonfinite_more": "nonfinite",
    "activation_nan": "nonfinite", "activation_inf": "nonfinite",
    "max_weight_value_more": "max_weight_value",
    "dead_gradient": "dead_gradients", "dead_gradient_more": "dead_gradients", "all_gradients_zero": "dead_gradients",
    "device_memory": "memory", "host_memory": "memory",
}


def rule_for_check(check: str) -> str:
    """The rule a safety-monitor check (or a detection issue's check) belongs to; unknown checks name themselves."""
    return _CHECK_RULES.get(check, check)


@dataclass(frozen=True)
class Policy:
    """The active table: thresholds, each rule's parameters and actions, and which rules are on.

    Built from the defaults above and, optionally, policy files (engine.policy_file).
    """

    thresholds: Mapping[str, float]
    params: Mapping[str, Mapping[str, float]]
    actions: Mapping[str, Mapping[str, Action]]
    enabled: Mapping[str, bool]
    sources: tuple[str, ...] = ()  # the policy files applied, in order
    #: the file that last set each overridden value: "thresholds.NAME", "rules.RULE.PARAM",
    #: "rules.RULE.enabled", "rules.RULE.actions.SEVERITY" -> file; values not listed are defaults
    origins: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def default(cls) -> "Policy":
        return cls(
            thresholds=default_thresholds(),
            params={name: {p: spec.default for p, spec in rule.params.items()} for name, rule in RULES.items()},
            actions={name: dict(rule.actions) for name, rule in RULES.items()},
            enabled={name: True for name in RULES},
        )

    def param(self, rule: str, name: str) -> float:
        return self.params[rule][name]

    def action_for(self, rule: str, severity: "Severity | str") -> Action:
        """The action a rule's issue of this severity takes; a disabled or unknown rule only alerts."""
        if not self.enabled.get(rule, True):
            return Action.ALERT
        return self.actions.get(rule, {}).get(Severity.parse(severity).name, Action.ALERT)

    def decide(self, issue: dict) -> dict:
        """`issue` with its rule and action filled in (an issue of a disabled rule drops to INFO)."""
        rule = issue.get("rule") or rule_for_check(str(issue.get("check", "")))
        if not self.enabled.get(rule, True):
            return {**issue, "rule": rule, "severity": "INFO", "action": Action.ALERT.value}
        return {**issue, "rule": rule, "action": self.action_for(rule, issue["severity"]).value}

    def describe(self) -> list[tuple[str, bool, str, str, str]]:
        """(rule, enabled, parameters, actions, meaning) per rule, for the policy screen and --help."""
        rows = []
        for name, rule in RULES.items():
            params = ", ".join(f"{p}={self.params[name][p]:g}" for p in rule.params)
            actions = ", ".join(f"{s}->{a.value}" for s, a in sorted(
                self.actions.get(name, {}).items(), key=lambda item: Severity.parse(item[0]), reverse=True))
            rows.append((name, self.enabled.get(name, True), params, actions or "alert", rule.meaning))
        return rows


def strongest_action(issues: Iterable[Mapping]) -> Action:
    """The strongest action among decided issues (ALERT when none)."""
    return max((Action(i.get("action", "alert")) for i in issues), key=lambda a: a.rank, default=Action.ALERT)


# -- the edit gate ---------------------------------------------------------------------------

#: ||dW||/||W|| of one tensor an edit touches above which the edit gate rejects the edit.
#: Measured on the demo model (bench/edits.py, "gate" rows): ROME-style rank-one edits that
#: rewrite one key's MLP output by 0.5-4x its norm move the matrix by 0.07-0.52 and leave the
#: held-out perplexity unchanged; edits that damage the model (perplexity +7% to x2.3: a
#: rank-one rewrite by 16-64x, the matrix scaled by 3 or 10) move it by 2 and more.
EDIT_RELATIVE_CHANGE_LIMIT = 1.0


#: how the console marks an edit-journal entry: a rejected edit was caught (the gate worked), a
#: failed one raised inside its block; both were rolled back. Committed and revert entries: none.
EDIT_OUTCOME_SEVERITY = {"rejected": "MEDIUM", "failed": "HIGH", "reverted": "LOW"}


def edit_checkpoint_reason(commits_since: int, max_relative: float, every: float, above: float) -> str:
    """Why the "edit_checkpoint" rule asks for a checkpoint at this commit ("" when it does not).

    `commits_since`: committed edits since the last such checkpoint, this one included. The
    default `above` (0.5) is the update_size rule's HIGH: an edit the per-step detection would
    call a large update is kept as a checkpoint of its own, so it can be returned to directly.
    """
    if every and commits_since >= every:
        return f"every {int(every)} committed edits"
    if above and max_relative >= above:
        return f"||dW||/||W|| {max_relative:.3g} >= {above:g}"
    return ""
