"""Detection beyond absolute thresholds: each tensor against its own baseline, rolling rules over what
a run produces, per-step update sizes, escalation; `Detector` runs them all once per step.

The fused scan (engine.health_scan) and the activation hooks (engine.activation_monitor) feed it;
engine.policy decides the severity's action.
"""

from engine.detection.baseline_stats import BaselineStats
from engine.detection.detector import Detector

__all__ = ["BaselineStats", "Detector"]
