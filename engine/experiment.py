"""The guide's "Code Template: Safe Modification" as a real function.

`safe_modification_experiment(model, modification_fn, test_fn, experiment_name)`
checkpoints a baseline, records baseline metrics, applies the modification,
checks health, tests, and keeps the change only if perplexity improved —
otherwise (or on any exception) it rolls back. Its prints and return values are
the guide's. Paths default to the guide's ("data/checkpoints",
"data/memory/<experiment_name>", relative to the working directory);
`checkpoint_dir=` and `memory_dir=` override them.

Experiments run under the engine are files defining `run(ctx)`: see
engine.runtime.experiment_context (ExperimentContext, load_experiment), re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from engine.runtime.experiment_context import ExperimentContext, ExperimentLoadError, load_experiment

__all__ = ["safe_modification_experiment", "ExperimentContext", "ExperimentLoadError", "load_experiment"]


def safe_modification_experiment(
    model: Any,
    modification_fn: Callable[[Any], Any],
    test_fn: Callable[[Any], dict],
    experiment_name: str,
    *,
    checkpoint_dir: str | Path = "data/checkpoints",
    memory_dir: str | Path | None = None,
) -> dict:
    """
    Template for safe modification experiments

    Args:
        model: The model to modify
        modification_fn: Function that performs modification
        test_fn: Function that tests the modification (returns a dict with "perplexity")
        experiment_name: Unique experiment identifier

    Returns {"success": True, "checkpoint", "improvement"} when kept,
    {"success": False, "improvement"} when rolled back, or
    {"success": False, "error"} when an exception forced a rollback.
    """
    from engine.checkpointing import CheckpointManager
    from engine.memory import MemorySystem
    from engine.safety_monitor import SafetyMonitor

    # Setup
    checkpointer = CheckpointManager(model, checkpoint_dir)
    safety = SafetyMonitor()
    memory = MemorySystem(memory_dir if memory_dir is not None else f"data/memory/{experiment_name}")
    try:
        # Pre-modification
        print(f"🚀 Starting experiment: {experiment_name}")

        # 1. Baseline checkpoint
        baseline_id = checkpointer.save_checkpoint(metadata={"state": "baseline", "experiment": experiment_name})
        print(f"✓ Baseline checkpoint: {baseline_id}")

        # 2. Record baseline metrics
        baseline_metrics = test_fn(model)
        memory.record_observation(
            f"Baseline metrics: {baseline_metrics}",
            category="baseline",
            metadata={"checkpoint": baseline_id, **baseline_metrics},
        )

        # Modification
        try:
            # 3. Perform modification
            print("🔧 Applying modification...")
            modification_fn(model)

            # 4. Safety check
            health = safety.check_model_health(model)
            if health["status"] == "CRITICAL":
                raise RuntimeError(f"Critical safety issue: {health['message']}")

            # 5. Test modification
            print("🧪 Testing modification...")
            test_results = test_fn(model)

            # 6. Compare with baseline
            improvement = (
                (baseline_metrics["perplexity"] - test_results["perplexity"]) / baseline_metrics["perplexity"] * 100
            )
            print(f"Performance change: {improvement:+.2f}%")

            # 7. Decide: keep or rollback
            if improvement > 0:
                success_id = checkpointer.save_checkpoint(
                    metadata={"state": "success", "experiment": experiment_name, "improvement": improvement}
                )
                memory.record_observation(
                    f"Modification successful: {improvement:+.2f}% improvement",
                    category="success",
                    importance=0.9,
                    metadata={"checkpoint": success_id, "baseline": baseline_id, **test_results},
                )
                print(f"✓ Modification successful - checkpoint: {success_id}")
                return {"success": True, "checkpoint": success_id, "improvement": improvement}

            checkpointer.restore_checkpoint(baseline_id)
            memory.record_observation(
                f"Modification unsuccessful: {improvement:+.2f}% change",
                category="failure",
                importance=0.7,
                metadata={"rolled_back": True, **test_results},
            )
            print("✗ Modification unsuccessful - rolled back")
            return {"success": False, "improvement": improvement}

        except Exception as e:
            # Emergency rollback
            print(f"🚨 EXCEPTION: {e}")
            checkpointer.restore_checkpoint(baseline_id)
            memory.record_observation(
                f"Experiment failed with exception: {str(e)}",
                category="error",
                importance=0.8,
            )
            print("Emergency rollback complete")
            return {"success": False, "error": str(e)}
    finally:
        memory.close()
