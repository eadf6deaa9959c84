"""The engine's detection: the policy, the baseline statistics, and the rules judged at every step.

`DetectionWatch` loads the policy (engine.policy_file: defaults, the run
directory's policy.toml, `--policy FILE`), records per-tensor baseline
statistics with the baseline checkpoint (or reloads them when the engine
restarts on the same run), runs `engine.detection.Detector` after each
`ctx.step()` on the health scan that step made anyway, alerts what it found
(each alert names its rule and action) and returns the strongest action for
the experiment runner to carry out. After a restore it clears the gradients,
which belonged to the weights just thrown away.
"""

from __future__ import annotations

from typing import Any, Mapping

from engine.detection import BaselineStats, Detector
from engine.detection.baseline_stats import BASELINE_STATS_FILE
from engine.detection.detector import metric_values
from engine.health_scan import scan_model
from engine.policy import Action, Policy, strongest_action
from engine.policy_file import load_run_policy
from engine.policy_info import policy_info

SOURCE = "detection"


class DetectionWatch:
    """Per-step detection for the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore: model, safety monitor, run_dir, alert()
        self.policy: Policy = Policy.default()
        self.detector: Detector | None = None

    def load_policy(self) -> Policy:
        """The run's policy (PolicyError names a bad key); applied to the safety monitor by `attach`."""
        core = self._core
        self.policy = load_run_policy(core.run_dir, core.config.policy_file)
        return self.policy

    def attach(self) -> None:
        """Point the safety monitor and a fresh detector at the current model (setup, and after a reload)."""
        core = self._core
        core.safety.set_policy(self.policy)
        baseline = self.detector.baseline if self.detector is not None else None
        self.detector = Detector(core.model, self.policy, baseline=baseline)
        if self.policy.sources:
            core.alert("INFO", f"Policy from {', '.join(self.policy.sources)}", source=SOURCE)
        core.publish(policy_info(self.policy, core.run_dir))

    def record_baseline(self, checkpoint_id: str, *, fresh: bool = False) -> None:
        """Baseline statistics: reloaded from the run directory when they fit this model, else measured (and saved)."""
        core = self._core
        path = core.run_dir / BASELINE_STATS_FILE if core.run_dir is not None else None
        scan = scan_model(core.model, grads=False, norms=True)
        stats = None if fresh or path is None else BaselineStats.load(path)
        if stats is not None and stats.matches(scan):
            core.alert("INFO", f"Baseline statistics of {len(stats.tensors)} tensors reloaded from {path} "
                               f"(baseline {stats.checkpoint_id or 'unknown'})", source=SOURCE)
        else:
            stats = BaselineStats.from_scan(scan, checkpoint_id)
            if path is not None and not core.config.readonly:
                stats.save(path)
        self.detector.set_baseline(stats)
        if checkpoint_id:
            core.drift.start(checkpoint_id)
        elif core.drift.tracker is not None:
            core.drift.tracker.forget()

    def judge_step(self, step: int, health: dict, loss: Any = None,
                   metrics: Mapping[str, Any] | None = None) -> tuple[Action, list[dict]]:
        """Run every rule on this step; alert the detector's findings; (strongest action, decided issues)."""
        core = self._core
        loss_value, values = metric_values(loss, metrics)
        scan = core.safety.last_scan
        monitor = core.safety.activation_monitor
        peaks = dict(monitor.last_peaks) if monitor is not None else {}
        issues = self.detector.evaluate(step, scan, loss=loss_value, metrics=values, activation_peaks=peaks,
                                        monitor_issues=list(health.get("issues") or ()))
        own = [i for i in issues if i.get("source") == SOURCE]
        if own:
            core.safety.report_issues(("detection",), own)
        return strongest_action(issues), issues

    def after_restore(self, checkpoint_id: str) -> None:
        """Gradients belong to the weights just replaced: drop them, and say the optimizer state is stale."""
        core = self._core
        cleared = 0
        for param in core.model.parameters():
            if param.grad is not None:
                param.grad = None
                cleared += 1
        if self.detector is not None:
            self.detector.forget_weights()
        if core.drift.tracker is not None:
            core.drift.tracker.forget()
        if cleared:
            core.alert("MEDIUM", f"Restored {checkpoint_id}: cleared the gradients of {cleared} parameters. The "
                               "experiment's optimizer state (momentum, Adam moments, learning-rate schedule) "
                               "belongs to the discarded weights and is now stale: rebuild the optimizer when "
                               "the experiment restarts", source=SOURCE)
