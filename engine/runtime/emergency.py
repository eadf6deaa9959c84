"""The guide's emergency procedures, as engine behaviour.

Each function runs in the engine thread after the experiment has unwound, and
reports every step as an Alert (source "emergency") so the operator can follow
the recovery as it happens:

- `operator_stop`: emergency stop -> forensic checkpoint -> roll back -> verify.
- `unhealthy_weights` (scenario 1, NaN/Inf): stop -> name the affected tensors
  -> forensic checkpoint -> roll back to the newest checkpoint that passed a
  health check -> verify.
- `degraded` (scenario 2): perplexity > +50% vs baseline -> roll back (to a
  checkpoint whose perplexity is back within bounds) -> re-benchmark.
- `out_of_memory` (scenario 3): free the CUDA cache + gc -> halve the batch ->
  fall back to CPU if on CUDA and still failing -> retry the checkpoint save ->
  rerun the experiment (bounded).
- `rollback` itself follows scenario 4: a restore that fails (or leaves the
  model unhealthy) moves on to the next older good checkpoint, then reloads the
  model from disk and records a new baseline.

Each procedure is given a `RecoveryActions` (engine.runtime.recovery): the
narrow set of things a recovery may do to the engine, never the engine itself.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from engine.policy import perplexity_acceptable
from engine.runtime.experiment_context import ExperimentContext, last_frame_in
from engine.store.metadata import CheckpointState, rollback_target

if TYPE_CHECKING:
    from engine.device_memory import OutOfMemory
    from engine.runtime.recovery import RecoveryActions

SOURCE = "emergency"


def _alert(actions: "RecoveryActions", severity: str, message: str) -> None:
    actions.alert(severity, message, SOURCE)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def keep_forensic(actions: "RecoveryActions", reason: str) -> str | None:
    """Save the state about to be rolled back from, tagged, so nothing is lost."""
    if not actions.may_keep_forensic:
        return None
    if not actions.forensic_enabled:
        _alert(actions, "INFO", "Forensic checkpoint skipped (disabled by configuration)")
        return None
    try:
        checkpoint_id = actions.save_checkpoint(
            CheckpointState.FORENSIC, f"Forensic state before rollback ({reason})", health=actions.health_label(),
            tags=[CheckpointState.FORENSIC, reason], hold=False, reason=reason,
        )
    except Exception as exc:
        _alert(actions, "HIGH", f"Could not save the forensic checkpoint: {type(exc).__name__}: {exc}")
        return None
    _alert(actions, "INFO", f"Forensic checkpoint {checkpoint_id} keeps the state before rollback; restore it to inspect")
    return checkpoint_id


def good_checkpoints(store) -> list[dict]:
    """Checkpoints of `store` (anything with list_checkpoints()) that may be rolled back to, newest first."""
    entries = [entry for entry in store.list_checkpoints() if rollback_target(entry)]
    entries.reverse()
    return entries


def rollback(actions: "RecoveryActions", reason: str, *, check_perplexity: bool = False) -> str | None:
    """Roll back to the newest good checkpoint that restores and verifies; returns its id.

    Falls back to older good checkpoints, then to reloading the model from disk
    (then a new baseline is recorded). Returns None only when nothing worked.
    """
    if not actions.has_checkpoints:
        _alert(actions, "CRITICAL", "No checkpoints to roll back to (read-only engine); manual intervention needed")
        return None
    candidates = good_checkpoints(actions)
    if not candidates:
        _alert(actions, "HIGH", "No checkpoint that passed a health check exists; reloading the model from disk")
    for index, entry in enumerate(candidates):
        checkpoint_id = entry["id"]
        _alert(actions, "INFO", f"Rolling back to {checkpoint_id} ({(entry.get('metadata') or {}).get('purpose', '')})")
        if not actions.restore(checkpoint_id):
            _alert(actions, "HIGH", f"Restore of {checkpoint_id} failed: {actions.checkpoint_error}. "
                                    f"Trying the next older good checkpoint ({len(candidates) - index - 1} left)")
            continue
        if verify(actions, checkpoint_id, check_perplexity=check_perplexity):
            _hold(actions, checkpoint_id)
            return checkpoint_id
    return reload_from_disk(actions, reason)


def _hold(actions: "RecoveryActions", checkpoint_id: str) -> None:
    try:
        actions.hold(checkpoint_id)
    except Exception as exc:
        _alert(actions, "LOW", f"Could not keep {checkpoint_id} in memory for fast rollback: {exc}")


def verify(actions: "RecoveryActions", checkpoint_id: str, *, check_perplexity: bool = False) -> bool:
    """Health check after a restore (and perplexity if asked); one alert with the verdict."""
    health = actions.scan_health()
    actions.publish_health(health)
    if health["status"] == "CRITICAL":
        _alert(actions, "HIGH", f"After restoring {checkpoint_id} the model is still unhealthy: {health.get('message')}")
        return False
    detail = f"NaN {health.get('nan_count', 0)}, Inf {health.get('inf_count', 0)}, max|w| {_fmt(health.get('max_abs_weight'))}"
    baseline = actions.baseline_perplexity
    if check_perplexity and baseline is not None:
        perplexity = actions.evaluate_perplexity()
        if not perplexity_acceptable(perplexity, baseline, actions.thresholds):
            _alert(actions, "HIGH", f"After restoring {checkpoint_id} perplexity is {_fmt(perplexity)} "
                                    f"(baseline {_fmt(baseline)}): still degraded, trying an older checkpoint")
            return False
        detail += f", perplexity {_fmt(perplexity)}"
    _alert(actions, "INFO", f"Verified {checkpoint_id} after restore: health {health['status']} ({detail})")
    return True


def reload_from_disk(actions: "RecoveryActions", reason: str) -> str | None:
    """Scenario 4's last resort: reload the weights from disk, then record a new baseline."""
    _alert(actions, "CRITICAL", "Every good checkpoint failed to restore or verify; reloading the model from disk")
    actions.set_recovering("reloading the model from disk")
    if not actions.reload_model():
        _alert(actions, "CRITICAL", f"Reloading the model from disk failed: {actions.model_error}. "
                                    "The model is in an unknown state; manual intervention needed")
        return None
    health = actions.scan_health()
    actions.publish_health(health)
    if health["status"] == "CRITICAL":
        _alert(actions, "CRITICAL", f"The model reloaded from disk is unhealthy: {health.get('message')}")
        return None
    _alert(actions, "HIGH", f"Reloaded the model from disk ({actions.model_name}); recording a new baseline")
    perplexity = actions.record_new_baseline()
    checkpoint_id = actions.save_checkpoint(
        CheckpointState.BASELINE, "New baseline after recovery", health=health["status"],
        tags=[CheckpointState.BASELINE, "recovery"], hold=True, reason=reason, perplexity=perplexity,
    )
    if actions.verify_checkpoint(checkpoint_id):
        _alert(actions, "INFO", f"New baseline {checkpoint_id} saved and verified after reload "
                                f"(perplexity {_fmt(perplexity)})")
    else:
        _alert(actions, "HIGH", f"New baseline {checkpoint_id} saved after reload but it does not verify: "
                                f"{actions.checkpoint_error} The model itself is healthy; keep this run going "
                                "only with a fresh run directory (--run-dir) if the damage persists")
    return checkpoint_id


def operator_stop(actions: "RecoveryActions", reason: str) -> bool:
    """Emergency stop: the experiment has halted; keep its state, roll back, verify."""
    _alert(actions, "HIGH", f"Emergency stop ({reason}): experiment halted at step {actions.step}")
    keep_forensic(actions, "emergency_stop")
    actions.set_recovering("rolling back after emergency stop")
    restored = rollback(actions, "emergency_stop")
    if restored is None:
        _alert(actions, "CRITICAL", "Emergency stop: rollback failed; the model may be damaged")
        return False
    _alert(actions, "INFO", f"Emergency stop complete: model rolled back to {restored}; the experiment stays stopped")
    return True


def _affected_layers(actions: "RecoveryActions", health: dict) -> list[str]:
    layers = [i.get("layer") for i in health.get("issues") or () if i.get("severity") == "CRITICAL" and i.get("layer")]
    if layers:
        return list(dict.fromkeys(layers))
    return actions.nonfinite_parameters()


def unhealthy_weights(actions: "RecoveryActions", health: dict) -> bool:
    """Scenario 1: NaN/Inf (or another CRITICAL health issue) -> stop, roll back, verify."""
    _alert(actions, "CRITICAL", f"{health.get('message') or 'CRITICAL health'}: EMERGENCY STOP of the experiment "
                                f"at step {actions.step}")
    layers = _affected_layers(actions, health)
    if layers:
        shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
        _alert(actions, "HIGH", f"Affected tensors: {shown}")
    keep_forensic(actions, "unhealthy_weights")
    restored = rollback(actions, "unhealthy_weights")
    if restored is None:
        _alert(actions, "CRITICAL", "Restore failed: manual intervention needed")
        return False
    return True


def degraded(actions: "RecoveryActions", perplexity: float, baseline: float) -> bool:
    """Scenario 2: perplexity more than 50% worse than the baseline -> roll back, re-benchmark."""
    change = (perplexity / baseline - 1.0) * 100.0 if baseline else float("inf")
    _alert(actions, "CRITICAL", f"Perplexity {_fmt(perplexity)} is {change:+.1f}% vs baseline {_fmt(baseline)} "
                                f"(> +50%): stopping the experiment and rolling back")
    keep_forensic(actions, "degraded")
    restored = rollback(actions, "degraded", check_perplexity=True)
    if restored is None:
        _alert(actions, "CRITICAL", "Rollback after degradation failed: manual intervention needed")
        return False
    after = actions.remeasure_perplexity()
    _alert(actions, "INFO", f"Re-benchmarked after rollback: perplexity {_fmt(after)} (baseline {_fmt(baseline)})")
    return True


def out_of_memory(actions: "RecoveryActions", ctx: ExperimentContext, caught: OutOfMemory, attempt: int,
                  max_attempts: int) -> bool:
    """Scenario 3: free memory, halve the batch, CPU fallback, checkpoint again; True to rerun.

    `caught` is what is left of the exception (engine.device_memory): its frames are already
    cleared, so what the failed attempt allocated is garbage when the memory is freed here.
    """
    _alert(actions, "HIGH", f"Out of memory in the experiment (attempt {attempt} of {max_attempts}): {caught}")
    on_cuda = actions.on_cuda
    _alert(actions, "INFO", actions.free_memory(caught).describe())
    size = ctx.halve_batch_size()
    _alert(actions, "INFO", f"Reduced the experiment's batch size to {size}")
    if on_cuda and attempt >= 2:
        actions.move_model_to_cpu()
        _alert(actions, "HIGH", "Still out of memory: moved the model to the CPU; it stays there (a reload keeps it) "
                                "until the engine restarts")
    try:
        checkpoint_id = actions.save_checkpoint(
            CheckpointState.RECOVERY, "After out-of-memory recovery", health=actions.scan_health()["status"],
            tags=["oom"], hold=False, batch_size=size,
        )
        _alert(actions, "INFO", f"Checkpoint saved after out-of-memory recovery: {checkpoint_id}")
    except Exception as save_exc:
        _alert(actions, "HIGH", f"Still can't checkpoint after out-of-memory: {type(save_exc).__name__}: {save_exc}")
    if attempt >= max_attempts:
        _alert(actions, "HIGH", f"Out of memory {attempt} times: giving up on the experiment and rolling back")
        rollback(actions, "out_of_memory")
        return False
    _alert(actions, "INFO", f"Rerunning the experiment with batch size {size}")
    return True


def experiment_failed(actions: "RecoveryActions", exc: BaseException, name: str) -> bool:
    """The experiment raised: report where, roll back to the newest good checkpoint."""
    _alert(actions, "HIGH", f"Experiment {name} raised {type(exc).__name__}: {exc} at {last_frame_in(exc)}; rolling back")
    keep_forensic(actions, "experiment_error")
    restored = rollback(actions, "experiment_error")
    if restored is None:
        return False
    _alert(actions, "INFO", f"Rolled back to {restored} after the experiment's error; the experiment stays stopped")
    return True
