"""The guide's safety dashboard as one dict: checkpoints, health, alert counts, weight NaN/Inf.

The guide counts NaN/Inf with a Python loop over parameters; here the counts
come from the health check's fused scan that the dashboard runs anyway (the
same numbers, one pass instead of three per tensor).
"""

from __future__ import annotations


def get_safety_dashboard(model, checkpointer, safety) -> dict:
    """Current safety status; `checkpoints.latest` is None while there are no checkpoints."""
    checkpoints = checkpointer.list_checkpoints()
    health = safety.check_model_health(model)
    return {
        "checkpoints": {
            "total": len(checkpoints),
            "latest": checkpoints[-1]["id"] if checkpoints else None,
            "disk_usage_gb": checkpointer.get_disk_usage() / 1e9,
        },
        "health": health,
        "alerts": {
            "critical": len(safety.get_alerts_by_severity("CRITICAL")),
            "high": len(safety.get_alerts_by_severity("HIGH")),
            "medium": len(safety.get_alerts_by_severity("MEDIUM")),
        },
        "weights": {
            "nan_count": health["nan_count"],
            "inf_count": health["inf_count"],
        },
    }
