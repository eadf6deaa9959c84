"""The run directory under a running engine: deleted, and shared with another writing process."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.checkpointing import CheckpointManager
from engine.commands import Save
from engine.runtime.emergency import good_checkpoints
from engine.events import CheckpointList, EngineState
from engine.memory import MemorySystem
from tests.engine_harness import engines, tiny_model_dir, write_experiment  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]

TICKING = """
    import torch

    def run(ctx):
        while True:
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.down_proj.weight.mul_(1.0001)
            ctx.memory.record_modification("model.layers.0.mlp.down_proj.weight", {"scale": 1.0001})
            ctx.step("tick")
            ctx.wait(0.02)
"""


def test_run_directory_deleted_while_the_engine_runs(engines, tiny_model_dir, tmp_path, ledger):  # noqa: F811
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, write_experiment(tmp_path, TICKING), auto_checkpoint_every=5)
    driver.wait_until(lambda: (driver.core.step or 0) > 6)
    while run_dir.exists():  # the engine keeps writing: remove until it is gone once
        shutil.rmtree(run_dir, ignore_errors=True)
    done = driver.command(Save(purpose="after the run directory was deleted"))
    driver.engine.emergency_stop("test: after deletion")
    outcome = driver.wait_outcome()
    alive = driver.engine.is_alive() and driver.engine.state is not EngineState.ERROR
    target = good_checkpoints(driver.core.checkpoints)[0]["id"]
    lost = driver.core.checkpoints.compare_with_model(target)["num_differences"]
    fresh = CheckpointManager(driver.core.model, run_dir / "checkpoints", memory_snapshot=False)
    lost += sum(not fresh.verify_checkpoint(c["id"]) for c in fresh.list_checkpoints())
    told = any("was deleted while the engine ran" in m for m in driver.alert_messages())
    ledger.fault("run directory deleted while the engine runs (engine recreates it, keeps saving)",
                 detected=alive and done.ok and outcome == "stopped" and told, lost=lost)


OTHER_WRITER = """
import sys, torch
from engine.checkpointing import CheckpointManager
from engine.memory import MemorySystem
from tests.conftest import make_tiny_qwen2
run = sys.argv[1]
model = make_tiny_qwen2(seed=1)
cm = CheckpointManager(model, run + "/checkpoints")
memory = MemorySystem(run + "/memory")
for i in range(int(sys.argv[2])):
    with torch.no_grad():
        model.model.norm.weight.add_(0.01)
    cm.save_checkpoint({"purpose": f"other process {i}", "writer": "other"})
    memory.record_observation(f"other process {i}", category="other-writer", metadata={"i": i})
print("done")
"""


def test_another_process_writes_the_same_run_directory(engines, tiny_model_dir, tmp_path, ledger):  # noqa: F811
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir, write_experiment(tmp_path, TICKING), auto_checkpoint_every=3)
    driver.wait_until(lambda: (driver.core.step or 0) > 2)
    n = 12
    other = subprocess.run([sys.executable, "-c", OTHER_WRITER, str(run_dir), str(n)], cwd=ROOT, capture_output=True,
                           text=True, timeout=240, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin",
                                                        "HF_HUB_OFFLINE": "1"})
    assert other.returncode == 0, other.stderr[-2000:]
    seen = driver.wait_for(lambda e: isinstance(e, CheckpointList)  # the engine lists them live
                           and sum(c.purpose.startswith("other process") for c in e.checkpoints) == n)
    driver.engine.emergency_stop("test: done")
    driver.wait_outcome()
    fresh = CheckpointManager(driver.core.model, run_dir / "checkpoints", memory_snapshot=False)
    listed = fresh.list_checkpoints()
    broken = sum(not fresh.verify_checkpoint(c["id"]) for c in listed)
    with MemorySystem(run_dir / "memory") as memory:
        others = memory.observations.query(category="other-writer")
        ours = memory.observations.query(tags=["modification"])
    lost = broken + (n - len(others)) + (n - sum((c["metadata"] or {}).get("writer") == "other" for c in listed))
    ledger.fault("engine and another process writing one run directory (checkpoints, memory)",
                 detected=bool(seen) and fresh.damaged_checkpoints() == [] and len(ours) > 0, lost=lost)


def test_damaged_memory_database_at_start_is_reported_and_the_engine_runs(engines, tiny_model_dir, tmp_path, ledger):  # noqa: F811
    import sqlite3

    run_dir = tmp_path / "run"
    memory = MemorySystem(run_dir / "memory")
    memory.record_observation("before the damage", category="coupled_modification", tags=["lm_head"])
    memory.close()
    db = next((run_dir / "memory").glob("*.sqlite3"))
    with sqlite3.connect(db) as conn:  # changed on disk behind the checksum's back
        conn.execute("UPDATE observations SET description = ?", ("tampered",))
    evidence = db.read_bytes()
    driver = engines(tiny_model_dir, run_dir, None)
    driver.wait_until(lambda: driver.engine.state is EngineState.IDLE)
    told = [m for m in driver.alert_messages("HIGH") if "Memory system unavailable" in m]
    done = driver.command(Save(purpose="guarding without the memory database"))
    fresh = CheckpointManager(driver.core.model, run_dir / "checkpoints", memory_snapshot=False)
    lost = sum(not fresh.verify_checkpoint(c["id"]) for c in fresh.list_checkpoints())
    lost += db.read_bytes() != evidence  # the damaged file is kept as it was, for the operator to inspect
    ledger.fault("memory database damaged before the engine starts (engine runs without it)",
                 detected=bool(told) and done.ok and str(db) in told[0], lost=lost)
