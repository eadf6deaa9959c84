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

The `core` argument is the engine thread's EngineCore.
"""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

import torch

from engine.experiment_context import ExperimentContext, last_frame_in

if TYPE_CHECKING:
    from engine.engine_thread import EngineCore

SOURCE = "emergency"
PERPLEXITY_LIMIT = 1.5  # rollback when perplexity exceeds the baseline by more than 50%
UNUSABLE_STATES = ("forensic", "recovery")  # recovery: saved mid-failure, holds the damage


def _alert(core: "EngineCore", severity: str, message: str) -> None:
    core.alert(severity, message, source=SOURCE)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def keep_forensic(core: "EngineCore", reason: str) -> str | None:
    """Save the state about to be rolled back from, tagged, so nothing is lost."""
    if core.checkpoints is None or core.config.readonly:
        return None
    if not core.config.forensic_checkpoints:
        _alert(core, "INFO", "Forensic checkpoint skipped (disabled by configuration)")
        return None
    try:
        status = core.scan_health()["status"]
        if status == "OK" and core.perplexity_status != "OK":
            status = core.perplexity_status
        checkpoint_id = core.save_checkpoint(
            {"purpose": f"Forensic state before rollback ({reason})", "state": "forensic", "health": status,
             "reason": reason, "tags": ["forensic", reason]},
            hold=False,
        )
    except Exception as exc:
        _alert(core, "HIGH", f"Could not save the forensic checkpoint: {type(exc).__name__}: {exc}")
        return None
    _alert(core, "INFO", f"Forensic checkpoint {checkpoint_id} keeps the state before rollback; restore it to inspect")
    return checkpoint_id


def good_checkpoints(core: "EngineCore") -> list[dict]:
    """Checkpoints that passed a health check when saved, newest first (the held one leads)."""
    entries = [
        e for e in core.checkpoints.list_checkpoints()
        if (e.get("metadata") or {}).get("health") == "OK" and (e.get("metadata") or {}).get("state") not in UNUSABLE_STATES
    ]
    entries.reverse()
    return entries


def rollback(core: "EngineCore", reason: str, *, check_perplexity: bool = False) -> str | None:
    """Roll back to the newest good checkpoint that restores and verifies; returns its id.

    Falls back to older good checkpoints, then to reloading the model from disk
    (then a new baseline is recorded). Returns None only when nothing worked.
    """
    if core.checkpoints is None:
        _alert(core, "CRITICAL", "No checkpoints to roll back to (read-only engine); manual intervention needed")
        return None
    candidates = good_checkpoints(core)
    if not candidates:
        _alert(core, "HIGH", "No checkpoint that passed a health check exists; reloading the model from disk")
    for index, entry in enumerate(candidates):
        checkpoint_id = entry["id"]
        _alert(core, "INFO", f"Rolling back to {checkpoint_id} ({(entry.get('metadata') or {}).get('purpose', '')})")
        if not core.restore(checkpoint_id):
            _alert(core, "HIGH", f"Restore of {checkpoint_id} failed: {core.checkpoints.last_error}. "
                                 f"Trying the next older good checkpoint ({len(candidates) - index - 1} left)")
            continue
        if verify(core, checkpoint_id, check_perplexity=check_perplexity):
            _hold(core, checkpoint_id)
            return checkpoint_id
    return reload_from_disk(core, reason)


def _hold(core: "EngineCore", checkpoint_id: str) -> None:
    try:
        core.checkpoints.hold_in_memory(checkpoint_id)
    except Exception as exc:
        _alert(core, "LOW", f"Could not keep {checkpoint_id} in memory for fast rollback: {exc}")


def verify(core: "EngineCore", checkpoint_id: str, *, check_perplexity: bool = False) -> bool:
    """Health check after a restore (and perplexity if asked); one alert with the verdict."""
    health = core.scan_health()
    core.publish_health(health)
    if health["status"] == "CRITICAL":
        _alert(core, "HIGH", f"After restoring {checkpoint_id} the model is still unhealthy: {health.get('message')}")
        return False
    detail = f"NaN {health.get('nan_count', 0)}, Inf {health.get('inf_count', 0)}, max|w| {_fmt(health.get('max_abs_weight'))}"
    if check_perplexity and core.baseline_metrics:
        perplexity = core.evaluate(raise_on_critical=False)
        baseline = float(core.baseline_metrics["perplexity"])
        if perplexity is None or not perplexity <= baseline * PERPLEXITY_LIMIT:
            _alert(core, "HIGH", f"After restoring {checkpoint_id} perplexity is {_fmt(perplexity)} "
                                 f"(baseline {_fmt(baseline)}): still degraded, trying an older checkpoint")
            return False
        detail += f", perplexity {_fmt(perplexity)}"
    _alert(core, "INFO", f"Verified {checkpoint_id} after restore: health {health['status']} ({detail})")
    return True


def reload_from_disk(core: "EngineCore", reason: str) -> str | None:
    """Scenario 4's last resort: reload the weights from disk, then record a new baseline."""
    from engine.benchmarks import run_benchmarks, save_baseline_metrics
    from engine.engine_thread import EVAL_SEQ_LEN, EVAL_TOKENS

    _alert(core, "CRITICAL", "Every good checkpoint failed to restore or verify; reloading the model from disk")
    core.set_state_recovering("reloading the model from disk")
    if not core.manager.reload():
        _alert(core, "CRITICAL", f"Reloading the model from disk failed: {core.manager.error}. "
                                 "The model is in an unknown state; manual intervention needed")
        return None
    core.rebind_after_reload()
    core.perplexity_status = "OK"
    health = core.scan_health()
    core.publish_health(health)
    if health["status"] == "CRITICAL":
        _alert(core, "CRITICAL", f"The model reloaded from disk is unhealthy: {health.get('message')}")
        return None
    _alert(core, "HIGH", f"Reloaded the model from disk ({core.config.model}); recording a new baseline")
    metrics = run_benchmarks(core.model, core.tokenizer, max_tokens=EVAL_TOKENS, seq_len=EVAL_SEQ_LEN)
    core.baseline_metrics = metrics
    core.last_perplexity = float(metrics["perplexity"])
    save_baseline_metrics(metrics, core.run_dir / "baseline_metrics.json")
    checkpoint_id = core.save_checkpoint(
        {"purpose": "New baseline after recovery", "state": "baseline", "health": health["status"],
         "reason": reason, "perplexity": core.last_perplexity, "tags": ["baseline", "recovery"]},
        hold=True,
    )
    if core.checkpoints.verify_checkpoint(checkpoint_id):
        _alert(core, "INFO", f"New baseline {checkpoint_id} saved and verified after reload "
                             f"(perplexity {_fmt(core.last_perplexity)})")
    else:
        _alert(core, "HIGH", f"New baseline {checkpoint_id} saved after reload but it does not verify: "
                             f"{core.checkpoints.last_error} The model itself is healthy; keep this run going "
                             "only with a fresh run directory (--run-dir) if the damage persists")
    return checkpoint_id


def operator_stop(core: "EngineCore", reason: str) -> bool:
    """Emergency stop: the experiment has halted; keep its state, roll back, verify."""
    _alert(core, "HIGH", f"Emergency stop ({reason}): experiment halted at step {core.step}")
    keep_forensic(core, "emergency_stop")
    core.set_state_recovering("rolling back after emergency stop")
    restored = rollback(core, "emergency_stop")
    if restored is None:
        _alert(core, "CRITICAL", "Emergency stop: rollback failed; the model may be damaged")
        return False
    _alert(core, "INFO", f"Emergency stop complete: model rolled back to {restored}; the experiment stays stopped")
    return True


def _affected_layers(core: "EngineCore", health: dict) -> list[str]:
    layers = [i.get("layer") for i in health.get("issues") or () if i.get("severity") == "CRITICAL" and i.get("layer")]
    if layers:
        return list(dict.fromkeys(layers))
    found = []
    with torch.no_grad():
        for name, param in core.model.named_parameters():
            if not bool(torch.isfinite(param).all()):
                found.append(name)
    return found


def unhealthy_weights(core: "EngineCore", health: dict) -> bool:
    """Scenario 1: NaN/Inf (or another CRITICAL health issue) -> stop, roll back, verify."""
    _alert(core, "CRITICAL", f"{health.get('message') or 'CRITICAL health'}: EMERGENCY STOP of the experiment "
                             f"at step {core.step}")
    layers = _affected_layers(core, health)
    if layers:
        shown = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
        _alert(core, "HIGH", f"Affected tensors: {shown}")
    keep_forensic(core, "unhealthy_weights")
    restored = rollback(core, "unhealthy_weights")
    if restored is None:
        _alert(core, "CRITICAL", "Restore failed: manual intervention needed")
        return False
    return True


def degraded(core: "EngineCore", perplexity: float, baseline: float) -> bool:
    """Scenario 2: perplexity more than 50% worse than the baseline -> roll back, re-benchmark."""
    change = (perplexity / baseline - 1.0) * 100.0 if baseline else float("inf")
    _alert(core, "CRITICAL", f"Perplexity {_fmt(perplexity)} is {change:+.1f}% vs baseline {_fmt(baseline)} "
                             f"(> +50%): stopping the experiment and rolling back")
    keep_forensic(core, "degraded")
    restored = rollback(core, "degraded", check_perplexity=True)
    if restored is None:
        _alert(core, "CRITICAL", "Rollback after degradation failed: manual intervention needed")
        return False
    after = core.measure_perplexity()
    core.last_perplexity = after
    core.publish_health(core.last_health or core.scan_health())
    _alert(core, "INFO", f"Re-benchmarked after rollback: perplexity {_fmt(after)} (baseline {_fmt(baseline)})")
    return True


def out_of_memory(core: "EngineCore", ctx: ExperimentContext, exc: BaseException, attempt: int, max_attempts: int) -> bool:
    """Scenario 3: free memory, halve the batch, CPU fallback, checkpoint again; True to rerun."""
    _alert(core, "HIGH", f"Out of memory in the experiment (attempt {attempt} of {max_attempts}): {exc}")
    on_cuda = torch.cuda.is_available() and getattr(core.device, "type", str(core.device)).startswith("cuda")
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    gc.collect()
    _alert(core, "INFO", "Cleared the CUDA cache and collected garbage" if on_cuda else "Collected garbage")
    size = ctx.halve_batch_size()
    _alert(core, "INFO", f"Reduced the experiment's batch size to {size}")
    if on_cuda and attempt >= 2:
        core.model.cpu()
        torch.cuda.empty_cache()
        core.device = torch.device("cpu")
        _alert(core, "HIGH", "Still out of memory: moved the model to the CPU")
    try:
        status = core.scan_health()["status"]
        checkpoint_id = core.save_checkpoint(
            {"purpose": "After out-of-memory recovery", "state": "recovery", "health": status,
             "tags": ["oom"], "batch_size": size},
            hold=False,
        )
        _alert(core, "INFO", f"Checkpoint saved after out-of-memory recovery: {checkpoint_id}")
    except Exception as save_exc:
        _alert(core, "HIGH", f"Still can't checkpoint after out-of-memory: {type(save_exc).__name__}: {save_exc}")
    if attempt >= max_attempts:
        _alert(core, "HIGH", f"Out of memory {attempt} times: giving up on the experiment and rolling back")
        rollback(core, "out_of_memory")
        return False
    _alert(core, "INFO", f"Rerunning the experiment with batch size {size}")
    return True


def experiment_failed(core: "EngineCore", exc: BaseException, name: str) -> bool:
    """The experiment raised: report where, roll back to the newest good checkpoint."""
    _alert(core, "HIGH", f"Experiment {name} raised {type(exc).__name__}: {exc} at {last_frame_in(exc)}; rolling back")
    keep_forensic(core, "experiment_error")
    restored = rollback(core, "experiment_error")
    if restored is None:
        return False
    _alert(core, "INFO", f"Rolled back to {restored} after the experiment's error; the experiment stays stopped")
    return True

