"""SIGKILL of a process that saves checkpoints, deletes them and writes memory, at random instants.

After every kill a fresh process-side view must find: no damaged checkpoint visible, no crash
leftovers after opening, every checkpoint that existed before the trial still restorable to
its exact bytes, every new checkpoint exact too, and every memory row committed before the
trial still there in an intact database.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import sqlite3
import time

import pytest

from engine.checkpointing import CheckpointManager
from engine.memory import MemorySystem
from tests.reliability.crash_children import save_until_killed, small_model
from tests.reliability.helpers import FULL, changed, trials

KEEP = 6  # checkpoints kept between trials (older ones are deleted to bound the directory)


@pytest.fixture(scope="module")
def ctx():
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "engine.checkpointing", "engine.memory",
                                    "tests.reliability.crash_children"])
    return context


def exact(cm: CheckpointManager, cid: str) -> bool:
    if not cm.restore_checkpoint(cid):
        return False
    want = cm.get_checkpoint(cid)["metadata"]["fp"]
    return changed(want, cm.model) == 0


def memory_rows(run_dir) -> set[int]:
    with MemorySystem(run_dir / "memory") as memory:
        return {o.id for o in memory.observations.query(category="crash-test")}


def memory_intact(run_dir) -> bool:
    if not (run_dir / "memory").exists():
        return True
    conn = sqlite3.connect(run_dir / "memory" / "memory.sqlite3")
    try:
        return conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()


def campaign(ctx, run_dir, n: int, ledger) -> None:
    rng = random.Random(20251127)
    for trial in range(n):
        cm = CheckpointManager(small_model(0), run_dir / "checkpoints")
        before = [c["id"] for c in cm.list_checkpoints()]
        rows_before = memory_rows(run_dir) if (run_dir / "memory").exists() else set()
        ready = ctx.Event()
        child = ctx.Process(target=save_until_killed, args=(str(run_dir), trial % 2, trial % 3 != 0, ready))
        child.start()
        if trial % 3 == 0:
            ready.wait(60)  # a third of the trials kill after at least one whole save
        time.sleep(rng.uniform(0.0, 0.3))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL

        cm = CheckpointManager(small_model(1), run_dir / "checkpoints")  # opening cleans leftovers
        no_leftovers = not any((run_dir / "checkpoints" / "tmp").iterdir())
        blobs = {p.name.removesuffix(".safetensors") for p in cm.store.blob_dir.glob("*/*")}
        assert blobs == cm.store.referenced_blobs(), "opening left blobs no manifest references"
        no_damaged = cm.damaged_checkpoints() == []
        now = [c["id"] for c in cm.list_checkpoints()]
        lost = [cid for cid in before if cid not in now or not exact(cm, cid)]
        bad_new = [cid for cid in now if cid not in before and not exact(cm, cid)]
        rows_after = memory_rows(run_dir) if (run_dir / "memory").exists() else set()
        rows_lost = len(rows_before - rows_after)
        ledger.fault("SIGKILL while saving/deleting checkpoints and writing memory",
                     detected=no_leftovers and no_damaged and not bad_new and memory_intact(run_dir),
                     lost=len(lost) + rows_lost)
        for cid in now[:-KEEP]:
            cm.delete_checkpoint(cid)


@pytest.mark.slow
def test_sigkill_campaign_default(ctx, tmp_path, ledger):
    if FULL:
        pytest.skip("the full campaign below runs instead")
    campaign(ctx, tmp_path, trials(8, 0), ledger)


@pytest.mark.full
def test_sigkill_campaign_full(ctx, tmp_path, ledger):
    campaign(ctx, tmp_path, trials(8, 150), ledger)
