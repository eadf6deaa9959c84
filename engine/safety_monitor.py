"""SafetyMonitor: the guide's layer 2 (detection): health checks, alerts, emergency callback.

Every check returns `{"status": "OK"|"WARNING"|"CRITICAL", "message", "issues", ...stats}`
where each issue is `{"severity", "message", "source", "layer", "check", ...}`.
Every issue also becomes an alert (history in memory, a JSON-lines journal when
a run directory is given, and every alert listener), except that an issue that
persists across consecutive checks of the same thing is alerted once, and again
only after it has cleared: the engine scans once a second and must not flood.
The emergency callback runs on every check that finds a CRITICAL issue.

The model scan itself is `engine.health_scan` (one pass per tensor, one host
sync); activation hooks are `engine.activation_monitor`.
"""

from __future__ import annotations

import collections
import inspect
import logging
import math
import threading
import time
from datetime import datetime
from numbers import Real
from pathlib import Path
from typing import Callable

import psutil
import torch

from engine.activation_monitor import ActivationMonitor
from engine.alert_journal import append_alert
from engine.fsutil import secure_mkdir
from engine.gpu_readings import gpu_readings
from engine.health_scan import ScanResult, scan_model, scan_tensors
from engine.placement import model_devices
from engine import policy
from engine.policy import Policy, Severity, default_thresholds, status_for, validate_threshold

log = logging.getLogger("redline.safety")
log.addHandler(logging.NullHandler())  # no stderr fallback: a full-screen console owns the terminal

ALERT_JOURNAL = "alerts.jsonl"
MAX_ISSUES_PER_CHECK_KIND = 10  # beyond this many tensors with the same problem, one summary issue
ALERT_HISTORY_LIMIT = 100_000  # in memory; the journal keeps everything

#: which threshold a perplexity issue of each severity crossed, and how its message ends
_PERPLEXITY_RULES = {
    "CRITICAL": ("perplexity_critical", "above +{limit:.0%}, roll back"),
    "HIGH": ("perplexity_warning", "above +{limit:.0%}"),
    "LOW": ("perplexity_drift", "drifting"),
}


def _now_iso(t: float) -> str:
    return datetime.fromtimestamp(t).astimezone().isoformat(timespec="milliseconds")


def _issue(severity: str, source: str, check: str, message: str, layer: str | None = None, **extra) -> dict:
    return {"severity": severity, "message": message, "source": source, "layer": layer, "check": check, **extra}


def _callback_wants_result(fn: Callable) -> bool:
    """True if `fn` takes one positional argument (the check result), False if none; else TypeError."""
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False  # builtins without a signature: call as the guide does, with no arguments
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    if len(required) > 1 or required_kw:
        raise TypeError(
            f"emergency callback {fn!r} must accept no arguments or one (the check result); "
            f"its signature is {inspect.signature(fn)}"
        )
    return bool(positional) or any(p.kind == p.VAR_POSITIONAL for p in params)


def _summary(issues: list[dict]) -> str:
    if not issues:
        return "OK"
    ranked = sorted(issues, key=lambda i: Severity.parse(i["severity"]), reverse=True)
    head = "; ".join(f"{i['severity']}: {i['message']}" for i in ranked[:2])
    return head if len(ranked) <= 2 else f"{head} (+{len(ranked) - 2} more)"


def _beyond_tolerance(nonfinite_severity: str) -> str:
    """A tensor's NaN/Inf issue: CRITICAL once the run's count exceeds its tolerance, MEDIUM while within it."""
    return "CRITICAL" if nonfinite_severity == "CRITICAL" else "MEDIUM"


def _capped(issues: list[dict], source: str, check: str, noun: str) -> list[dict]:
    """Keep the first few per-tensor issues of one kind and summarise the rest in one issue."""
    if len(issues) <= MAX_ISSUES_PER_CHECK_KIND:
        return issues
    rest = issues[MAX_ISSUES_PER_CHECK_KIND:]
    worst = max((i["severity"] for i in rest), key=Severity.parse)
    summary = _issue(worst, source, check + "_more", f"{len(rest)} more tensors with {noun}", count=len(rest))
    return issues[:MAX_ISSUES_PER_CHECK_KIND] + [summary]


class SafetyMonitor:
    """Health checks with thresholds, deduplicated alerts, an alert journal and an emergency callback."""

    def __init__(self, run_dir: str | Path | None = None):
        self.thresholds: dict[str, float] = default_thresholds()
        self.journal_path: Path | None = None
        if run_dir is not None:
            self.journal_path = secure_mkdir(run_dir) / ALERT_JOURNAL
        self._lock = threading.RLock()
        self._alerts: collections.deque[dict] = collections.deque(maxlen=ALERT_HISTORY_LIMIT)
        self._active: dict[object, set] = {}  # check scope -> keys of issues alerted and still present
        self._listeners: list[Callable[[dict], None]] = []
        self._emergency: Callable | None = None
        self._emergency_wants_result = False
        self._in_emergency = False
        self._activations: ActivationMonitor | None = None
        self._process = psutil.Process()
        self.policy = Policy.default()  # names each issue's rule and action
        self.last_scan: ScanResult | None = None  # of the last check_model_health (with per-tensor norms)

    # -- configuration -------------------------------------------------------------------------

    def set_threshold(self, name: str, value: float) -> None:
        """Set a named threshold; unknown names and out-of-range values raise ValueError (engine.policy)."""
        value = validate_threshold(name, value)
        with self._lock:
            self.thresholds[name] = value

    def set_policy(self, policy: Policy) -> None:
        """Use `policy` (engine.policy_file) for thresholds and for the rule and action of every issue."""
        thresholds = {name: validate_threshold(name, value) for name, value in policy.thresholds.items()}
        with self._lock:
            self.policy = policy
            self.thresholds.update(thresholds)

    def set_emergency_callback(self, fn: Callable | None) -> None:
        """`fn()` (or `fn(result)` if it takes an argument) runs when a check finds a CRITICAL issue."""
        if fn is None:
            self._emergency, self._emergency_wants_result = None, False
            return
        if not callable(fn):
            raise TypeError(f"emergency callback must be callable, got {fn!r}")
        self._emergency_wants_result = _callback_wants_result(fn)
        self._emergency = fn

    def add_alert_listener(self, fn: Callable[[dict], None]) -> None:
        """`fn(alert)` is called (in the checking thread) for every new alert."""
        if not callable(fn):
            raise TypeError(f"alert listener must be callable, got {fn!r}")
        with self._lock:
            self._listeners.append(fn)

    def remove_alert_listener(self, fn: Callable[[dict], None]) -> None:
        with self._lock:
            if fn in self._listeners:
                self._listeners.remove(fn)

    # -- checks ----------------------------------------------------------------------------------

    def check_tensor_health(self, tensor: torch.Tensor, name: str) -> dict:
        """NaN / Inf (CRITICAL) and |value| above max_weight_value (HIGH) in one tensor, plus its stats."""
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"check_tensor_health needs a torch.Tensor for {name!r}, got {type(tensor).__name__}")
        scan = scan_tensors([(name, tensor)])
        issues = self._weight_issues(scan)
        mean = std = 0.0
        if tensor.is_floating_point() and tensor.numel():
            with torch.no_grad():
                t = tensor.detach()
                if scan.nan_count or scan.inf_count:
                    t = t[torch.isfinite(t)]
                if t.numel():
                    std_t, mean_t = torch.std_mean(t.float(), correction=0)
                    mean, std = torch.stack([mean_t, std_t]).tolist()
        stats = scan.weights[0] if scan.weights else None
        result = {
            "status": status_for(i["severity"] for i in issues),
            "message": _summary(issues),
            "issues": issues,
            "name": name,
            "nan_count": scan.nan_count,
            "inf_count": scan.inf_count,
            "max_abs": stats.finite_max_abs if stats else 0.0,  # over the finite values
            "min": stats.minimum if stats else 0.0,
            "max": stats.maximum if stats else 0.0,
            "mean": mean,
            "std": std,
            "numel": tensor.numel(),
            "shape": tuple(tensor.shape),
            "dtype": str(tensor.dtype).removeprefix("torch."),
        }
        self._after_check(("tensor", name), result)
        return result

    def check_model_health(self, model: torch.nn.Module) -> dict:
        """Weights, gradients, memory and (if attached) activations, in one fused scan."""
        start = time.perf_counter()
        monitor = self._activations
        pending = monitor.take_pending() if monitor is not None else []
        scan = scan_model(model, grads=True, norms=True, extra=pending)
        self.last_scan = scan
        issues = self._weight_issues(scan) + self._grad_issues(scan)
        if monitor is not None:
            issues += monitor.resolve(
                scan.extras,
                spike_factor=self.thresholds["activation_spike_factor"],
                warmup=self.thresholds["activation_warmup"],
            )
        memory = self._memory_stats(model)
        issues += memory.pop("issues")
        nonfinite = [n for s in scan.weights if not s.finite for n in s.names]
        result = {
            "status": status_for(i["severity"] for i in issues),
            "message": _summary(issues),
            "issues": issues,
            "nan_count": scan.nan_count,
            "inf_count": scan.inf_count,
            "max_abs_weight": scan.max_abs_weight,
            "grad_norm": scan.grad_norm,
            **memory,
            "nonfinite_layers": nonfinite,
            "tensors_scanned": len(scan.weights),
            "scan_seconds": time.perf_counter() - start,
        }
        self._after_check(("model", id(model)), result)
        return result

    def check_perplexity(self, perplexity: float, baseline: float) -> dict:
        """Perplexity against the baseline: LOW above drift, HIGH above +20%, CRITICAL above +50% (or non-finite)."""
        if isinstance(baseline, bool) or not isinstance(baseline, Real) or not math.isfinite(baseline) or baseline <= 0:
            raise ValueError(f"baseline perplexity must be a positive finite number, got {baseline!r}")
        if isinstance(perplexity, bool) or not isinstance(perplexity, Real):
            raise ValueError(f"perplexity must be a number, got {perplexity!r}")
        perplexity, baseline = float(perplexity), float(baseline)
        change = policy.perplexity_change(perplexity, baseline)
        t = self.thresholds
        severity = policy.perplexity_severity(perplexity, baseline, t)
        issues = []
        if severity in _PERPLEXITY_RULES:
            threshold, verdict = _PERPLEXITY_RULES[severity]
            text = f"perplexity {perplexity:.4g} vs baseline {baseline:.4g} ({change:+.1%})"
            issues.append(_issue(severity, "perplexity", "perplexity", f"{text}: {verdict.format(limit=t[threshold])}",
                                 value=perplexity, baseline=baseline, change=change, threshold=t[threshold]))
        result = {
            "status": status_for(i["severity"] for i in issues),
            "message": _summary(issues),
            "issues": issues,
            "perplexity": perplexity,
            "baseline": baseline,
            "change": change,
        }
        self._after_check(("perplexity",), result)
        return result

    # -- activation hooks -------------------------------------------------------------------------

    def attach_activation_monitor(self, model: torch.nn.Module, *, granularity: str = "blocks") -> None:
        """Hook `model`'s blocks (or every parameterised leaf); results show in check_model_health."""
        self.detach_activation_monitor()
        self._activations = ActivationMonitor(model, granularity=granularity)

    def detach_activation_monitor(self) -> None:
        if self._activations is not None:
            self._activations.detach()
            self._activations = None

    @property
    def activation_monitor(self) -> ActivationMonitor | None:
        return self._activations

    @property
    def activation_modules(self) -> list[str]:
        return self._activations.module_names if self._activations else []

    # -- alerts ------------------------------------------------------------------------------------

    def get_alert_history(self) -> list[dict]:
        """Every alert so far (oldest first), as dicts with timestamp (ISO), severity, message, source."""
        with self._lock:
            return [dict(a) for a in self._alerts]

    def get_alerts_by_severity(self, level: Severity | str) -> list[dict]:
        wanted = Severity.parse(level).name
        with self._lock:
            return [dict(a) for a in self._alerts if a["severity"] == wanted]

    def report_issues(self, scope: object, issues: list[dict]) -> None:
        """Alert issues found elsewhere (engine.detection), deduplicated per `scope` like a check's."""
        self._after_check(scope, {"status": status_for(i["severity"] for i in issues), "issues": list(issues),
                                  "message": _summary(issues)})

    def raise_alert(self, severity: Severity | str, message: str, source: str = "safety", **extra) -> dict:
        """Record one alert directly (journal + listeners), without deduplication."""
        return self._emit(_issue(Severity.parse(severity).name, source, extra.pop("check", source), message, **extra))

    # -- internals ---------------------------------------------------------------------------------

    def _weight_issues(self, scan: ScanResult) -> list[dict]:
        t = self.thresholds
        nan_total, inf_total = scan.nan_count, scan.inf_count
        nans, infs, big = [], [], []
        for s in scan.weights:
            label = s.name + (f" (also {', '.join(s.aliases)})" if s.aliases else "")
            if s.nan_count:
                sev = _beyond_tolerance(policy.nonfinite_severity(nan_total, 0, t))
                nans.append(_issue(sev, "weights", "nan", f"{s.nan_count} NaN values in {label}", s.name,
                                   count=s.nan_count, aliases=list(s.aliases)))
            if s.inf_count:
                sev = _beyond_tolerance(policy.nonfinite_severity(0, inf_total, t))
                infs.append(_issue(sev, "weights", "inf", f"{s.inf_count} Inf values in {label}", s.name,
                                   count=s.inf_count, aliases=list(s.aliases)))
            if policy.max_weight_severity(s.finite_max_abs, t) != "INFO":
                big.append(_issue("HIGH", "weights", "max_weight_value",
                                  f"|w| up to {s.finite_max_abs:.4g} in {label} exceeds max_weight_value "
                                  f"{t['max_weight_value']:g}",
                                  s.name, value=s.finite_max_abs, threshold=t["max_weight_value"], aliases=list(s.aliases)))
        return (_capped(nans, "weights", "nan", "NaN values") + _capped(infs, "weights", "inf", "Inf values")
                + _capped(big, "weights", "max_weight_value", "weights above max_weight_value"))

    def _grad_issues(self, scan: ScanResult) -> list[dict]:
        if not scan.grads:
            return []
        t = self.thresholds
        nan_total = sum(g.nan_count for g in scan.grads)
        inf_total = sum(g.inf_count for g in scan.grads)
        bad, dead = [], []
        for g in scan.grads:
            if g.nan_count:
                sev = _beyond_tolerance(policy.nonfinite_severity(nan_total, 0, t))
                bad.append(_issue(sev, "gradients", "grad_nan", f"{g.nan_count} NaN values in the gradient of {g.name}",
                                  g.name, count=g.nan_count))
            if g.inf_count:
                sev = _beyond_tolerance(policy.nonfinite_severity(0, inf_total, t))
                bad.append(_issue(sev, "gradients", "grad_inf", f"{g.inf_count} Inf values in the gradient of {g.name}",
                                  g.name, count=g.inf_count))
            if g.is_zero:
                dead.append(_issue("MEDIUM", "gradients", "dead_gradient",
                                   f"gradient of {g.name} is entirely zero (dead units)", g.name))
        issues = _capped(bad, "gradients", "grad_nonfinite", "non-finite gradients")
        if dead and len(dead) == len(scan.grads):
            issues.append(_issue("INFO", "gradients", "all_gradients_zero",
                                 f"all {len(dead)} gradients are zero (zeroed, no backward pass since?)"))
        else:
            issues += _capped(dead, "gradients", "dead_gradient", "all-zero gradients")
        norm = scan.grad_norm
        if not (nan_total or inf_total) and policy.gradient_severity(norm, t) != "INFO":
            issues.append(_issue("HIGH", "gradients", "gradient_clip",
                                 f"gradient norm {norm:.4g} exceeds gradient_clip {t['gradient_clip']:g} (explosion)",
                                 value=norm, threshold=t["gradient_clip"]))
        return issues

    def _memory_stats(self, model: torch.nn.Module) -> dict:
        t = self.thresholds
        issues = []
        dev_used = dev_total = None
        gpus = gpu_readings(model_devices(model))
        if gpus:
            dev_used, dev_total = sum(g.used for g in gpus), sum(g.total for g in gpus)
        for gpu in gpus:
            if policy.memory_severity(gpu.used, gpu.total, "device_memory_fraction", t) != "INFO":
                issues.append(_issue("HIGH", "memory", "device_memory",
                                     f"{gpu.device} memory {gpu.used / gpu.total:.0%} used ({gpu.used / 2**30:.1f} of "
                                     f"{gpu.total / 2**30:.1f} GiB) exceeds {t['device_memory_fraction']:.0%}",
                                     gpu.device, value=gpu.used / gpu.total, threshold=t["device_memory_fraction"]))
        vm = psutil.virtual_memory()
        host_fraction = (vm.total - vm.available) / vm.total if vm.total else 0.0
        if policy.memory_severity(vm.total - vm.available, vm.total, "host_memory_fraction", t) != "INFO":
            issues.append(_issue("HIGH", "memory", "host_memory",
                                 f"host memory {host_fraction:.0%} used ({(vm.total - vm.available) / 2**30:.1f} of "
                                 f"{vm.total / 2**30:.1f} GiB) exceeds {t['host_memory_fraction']:.0%}",
                                 value=host_fraction, threshold=t["host_memory_fraction"]))
        return {
            "issues": issues,
            "device_memory_used": dev_used,
            "device_memory_total": dev_total,
            "gpus": [g.as_dict() for g in gpus],  # one per GPU holding the model: the per-GPU gauges
            "host_memory_used": self._process.memory_info().rss,
            "host_memory_total": vm.total,
            "host_memory_fraction": host_fraction,
        }

    def _after_check(self, scope: object, result: dict) -> None:
        """Alert new issues (deduplicated per scope), then run the emergency callback on CRITICAL."""
        keys = []
        fresh = []
        decided = [self.policy.decide(i) for i in result["issues"]]
        if any(d["severity"] != i["severity"] for d, i in zip(decided, result["issues"])):  # a disabled rule
            result["status"], result["message"] = status_for(d["severity"] for d in decided), _summary(decided)
        result["issues"] = decided
        with self._lock:
            previous = self._active.get(scope, set())
            for issue in result["issues"]:
                key = (issue["severity"], issue["source"], issue["check"], issue["layer"])
                keys.append(key)
                if key not in previous:
                    fresh.append(issue)
            self._active[scope] = set(keys)
        for issue in fresh:
            self._emit(issue)
        if result["status"] == "CRITICAL":
            self._run_emergency(result)

    def _run_emergency(self, result: dict) -> None:
        fn = self._emergency
        if fn is None or self._in_emergency:
            return  # a check made by the callback itself does not re-enter it
        self._in_emergency = True
        try:
            fn(result) if self._emergency_wants_result else fn()
        except Exception as exc:  # noqa: BLE001 - reported as a CRITICAL alert, never swallowed
            log.exception("emergency callback %r failed", fn)
            issue = _issue("CRITICAL", "emergency_callback", "emergency_callback",
                           f"emergency callback failed: {type(exc).__name__}: {exc}")
            result["issues"].append(issue)
            self._emit(issue)
        finally:
            self._in_emergency = False

    def _emit(self, issue: dict) -> dict:
        now = time.time()
        alert = {"timestamp": _now_iso(now), "time": now, **issue}
        with self._lock:
            self._alerts.append(alert)
            listeners = list(self._listeners)
        log.log(Severity.parse(alert["severity"]).log_level, "[%s] %s: %s", alert["source"], alert["severity"], alert["message"])
        if self.journal_path is not None:
            try:
                append_alert(self.journal_path, _json_safe(alert))
            except OSError:
                log.exception("could not append to the alert journal %s", self.journal_path)
        for fn in listeners:
            try:
                fn(dict(alert))
            except Exception:  # noqa: BLE001 - one broken listener must not stop the others
                log.exception("alert listener %r failed", fn)
        return alert


def _json_safe(value):
    """Non-finite floats as strings, so every journal line is strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value

