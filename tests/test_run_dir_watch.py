"""Checkpoints written or deleted by another process appear as events (watchdog)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from engine.events import CheckpointDeleted, CheckpointList, CheckpointSaved
from engine.runtime.run_dir_watch import RunDirWatcher
from tests.engine_harness import engines, tiny_model_dir  # noqa: F401

REPO = Path(__file__).resolve().parents[1]


def test_watcher_calls_back_on_create_and_delete(tmp_path):
    calls = threading.Semaphore(0)
    watcher = RunDirWatcher(tmp_path, calls.release)
    assert watcher.start() and watcher.running
    try:
        (tmp_path / "a.json").write_text("{}")
        assert calls.acquire(timeout=30)
        while calls.acquire(timeout=0.2):  # drain the create/modify/close burst
            pass
        (tmp_path / "a.json").unlink()
        assert calls.acquire(timeout=30)
    finally:
        watcher.stop()
    assert not watcher.running


def test_watcher_refuses_a_missing_directory(tmp_path):
    assert RunDirWatcher(tmp_path / "absent", lambda: None).start() is False


OTHER_PROCESS = """
import sys
import torch
from engine.checkpointing import CheckpointManager

manager = CheckpointManager(torch.nn.Linear(4, 4), sys.argv[1])
print(manager.save_checkpoint({"purpose": "from another process", "state": "external"}), flush=True)
sys.stdin.readline()
print(manager.delete_checkpoint(sys.argv[2] if len(sys.argv) > 2 else manager.list_checkpoints()[-1]["id"]), flush=True)
"""


@pytest.mark.slow
def test_checkpoint_saved_and_deleted_by_another_process_appear(engines, tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    driver = engines(tiny_model_dir, run_dir)
    other = subprocess.Popen([sys.executable, "-c", OTHER_PROCESS, str(run_dir / "checkpoints")], cwd=REPO,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        external_id = other.stdout.readline().strip()
        assert external_id.startswith("checkpoint_")
        written = time.monotonic()
        saved = driver.wait_for(lambda e: isinstance(e, CheckpointSaved) and e.checkpoint.id == external_id,
                                timeout=30)
        print(f"external save seen {time.monotonic() - written:.2f} s after the other process wrote it")
        assert saved.origin == "external" and saved.checkpoint.purpose == "from another process"
        assert external_id in [c.id for c in driver.of(CheckpointList)[-1].checkpoints]

        other.stdin.write("delete\n")
        other.stdin.flush()
        assert other.stdout.readline().strip() == "True"
        deleted = driver.wait_for(lambda e: isinstance(e, CheckpointDeleted) and e.checkpoint_id == external_id,
                                  timeout=30)
        assert deleted.origin == "external"
        assert external_id not in [c.id for c in driver.of(CheckpointList)[-1].checkpoints]
    finally:
        other.kill()
        other.wait()
