"""The console's health gauges, built by the engine from one health scan.

Each gauge carries its text, the number its history plots and the severity
engine.policy gives it; the console draws them in order and decides nothing.
To add a gauge, append one `Gauge` here (and its rule to engine.policy if it
needs a new one).
"""

from __future__ import annotations

from typing import Any, Mapping

from engine import policy
from engine.events import Gauge
from engine.units import human_bytes, number


def health_gauges(result: Mapping[str, Any], *, perplexity: float | None, baseline_perplexity: float | None,
                  thresholds: Mapping[str, float] | None = None, perplexity_off: str = "") -> tuple[Gauge, ...]:
    """Gauges for a `SafetyMonitor.check_model_health` result and the latest perplexity.

    `perplexity_off`: why perplexity cannot be measured (e.g. "no tokenizer"), shown in its gauge.

    `result` may also be a HealthSnapshot's fields (same names; "issues" is then a count).
    """
    status = str(result.get("status", "OK"))
    issues = result.get("issues") or 0
    issues = issues if isinstance(issues, int) else len(issues)
    nan = int(result.get("nan_count") or 0)
    inf = int(result.get("inf_count") or 0)
    max_abs = float(result.get("max_abs_weight") or 0.0)
    grad = result.get("grad_norm")
    device_used, device_total = result.get("device_memory_used"), result.get("device_memory_total")
    host_used, host_total = int(result.get("host_memory_used") or 0), int(result.get("host_memory_total") or 0)

    ppl_note = f"({perplexity_off})" if perplexity_off else ""
    if perplexity is not None and baseline_perplexity:
        change = policy.perplexity_change(perplexity, baseline_perplexity)
        ppl_note = f"({change:+.0%} vs {number(baseline_perplexity)})"
    if device_used is None:
        device_text = "n/a (no GPU)"
    else:
        device_text = f"{human_bytes(device_used)} / {human_bytes(device_total)}"

    gauges = (
        Gauge("status", "status", f"{status} {issues} issue{'s' if issues != 1 else ''}",
              policy.status_severity(status), float(issues)),
        Gauge("nonfinite", "NaN/Inf", f"{nan} NaN  {inf} Inf",
              policy.nonfinite_severity(nan, inf, thresholds), float(nan + inf)),
        Gauge("max_abs", "max|w|", number(max_abs), policy.max_weight_severity(max_abs, thresholds), max_abs),
        Gauge("grad", "grad norm", number(grad), policy.gradient_severity(grad, thresholds),
              float(grad) if grad is not None else None),
        Gauge("ppl", "perplexity", "off" if perplexity_off else number(perplexity),
              policy.perplexity_severity(perplexity, baseline_perplexity, thresholds), perplexity, ppl_note),
        Gauge("device_mem", "device mem", device_text,
              policy.memory_severity(device_used, device_total, "device_memory_fraction", thresholds),
              float(device_used) if device_used is not None else None),
        Gauge("host_mem", "host mem", f"{human_bytes(host_used)} / {human_bytes(host_total)}",
              policy.memory_severity(host_used, host_total, "host_memory_fraction", thresholds), float(host_used)),
    )
    return gauges + gpu_gauges(result.get("gpus") or (), thresholds)


def gpu_gauges(gpus, thresholds: Mapping[str, float] | None = None) -> tuple[Gauge, ...]:
    """Per GPU holding the model: "gpuN mem" (used / total) and, where NVML reads it, "gpuN util" (percent).

    `gpus`: the "gpus" readings of a health check (engine/gpu_readings.py); none on a CPU-only run.
    """
    out = []
    for gpu in gpus:
        index, used, total, util = gpu["index"], int(gpu["used"]), int(gpu["total"]), gpu.get("utilization")
        out.append(Gauge(f"gpu{index}_mem", f"gpu{index} mem", f"{human_bytes(used)} / {human_bytes(total)}",
                         policy.memory_severity(used, total, "device_memory_fraction", thresholds), float(used)))
        if util is not None:
            out.append(Gauge(f"gpu{index}_util", f"gpu{index} util", f"{float(util):.0f}%", "INFO", float(util)))
    return tuple(out)
