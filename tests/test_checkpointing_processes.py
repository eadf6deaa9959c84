"""Other processes: SIGKILL at random instants during saves, concurrent savers, GC vs a live save.

Children come from a forkserver that has torch and the checkpoint modules imported, so each
trial starts in milliseconds instead of re-importing torch.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from engine.checkpointing import CheckpointManager

TRIALS = 20
FULL_TRIALS = 200


@pytest.fixture(scope="module")
def ctx():
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "engine.checkpointing", __name__])
    return context


def small_model(seed: int) -> torch.nn.Module:
    """About 1.5 MB of fp32 in a few tensors: big enough that kills land mid-write."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Embedding(1000, 128), torch.nn.Linear(128, 512), torch.nn.Linear(512, 128)
    )
    model[0].weight = model[0].weight  # plain; ties are covered elsewhere
    return model


def _save_forever(directory: str, seed: int, durable: bool, ready) -> None:
    model = small_model(seed)
    cm = CheckpointManager(model, directory, durable=durable)
    step = 0
    while True:
        with torch.no_grad():
            model[step % 3].weight.mul_(1.001)
        cm.save_checkpoint({"step": step, "pid": os.getpid()})
        ready.set()
        step += 1


def _save_n(directory: str, seed: int, n: int, start, out) -> None:
    model = small_model(seed)
    cm = CheckpointManager(model, directory)
    start.wait()
    mine = []
    for step in range(n):
        with torch.no_grad():
            model[1].weight.add_(0.01)
        mine.append(cm.save_checkpoint({"seed": seed, "step": step}))
    out.put((seed, mine, [c["id"] for c in cm.list_checkpoints()]))


def _kill_trials(ctx, directory: Path, trials: int) -> None:
    rng = random.Random(1234)
    for trial in range(trials):
        ready = ctx.Event()
        # half the trials without fsync: crash safety must not depend on it
        child = ctx.Process(target=_save_forever,
                            args=(str(directory), trial % 2, trial % 3 != 0, ready))
        child.start()
        if trial % 4 == 0:
            ready.wait(30)  # at least one whole save in a quarter of the trials
        time.sleep(rng.uniform(0.0, 0.25))
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        assert child.exitcode == -signal.SIGKILL


def _check_directory_after_crashes(directory: Path) -> int:
    model = small_model(0)
    cm = CheckpointManager(model, directory)  # opening cleans crash leftovers
    assert list((directory / "tmp").iterdir()) == []
    assert cm.damaged_checkpoints() == []
    listed = cm.list_checkpoints()
    for entry in listed:
        assert cm.verify_checkpoint(entry["id"]), cm.last_error
        assert cm.restore_checkpoint(entry["id"]), cm.last_error
    return len(listed)


@pytest.mark.slow
def test_sigkill_during_saves_leaves_whole_checkpoints(ctx, tmp_path):
    _kill_trials(ctx, tmp_path, TRIALS)
    assert _check_directory_after_crashes(tmp_path) >= TRIALS // 4


@pytest.mark.full
def test_sigkill_campaign(ctx, tmp_path):
    _kill_trials(ctx, tmp_path, FULL_TRIALS)
    assert _check_directory_after_crashes(tmp_path) >= FULL_TRIALS // 4


@pytest.mark.slow
def test_two_processes_saving_at_once(ctx, tmp_path):
    start, out = ctx.Event(), ctx.Queue()
    n = 8
    children = [ctx.Process(target=_save_n, args=(str(tmp_path), seed, n, start, out))
                for seed in (0, 1)]
    for c in children:
        c.start()
    start.set()
    results = [out.get(timeout=120) for _ in children]
    for c in children:
        c.join()
        assert c.exitcode == 0
    every = set(results[0][1]) | set(results[1][1])
    assert len(every) == 2 * n
    last_to_finish = max(results, key=lambda r: len(r[2]))
    assert set(last_to_finish[2]) == every  # it sees the other's checkpoints
    for _seed, mine, seen in results:
        assert set(mine) <= set(seen)
    cm = CheckpointManager(small_model(0), tmp_path)
    assert {c["id"] for c in cm.list_checkpoints()} == every
    for cid in every:
        assert cm.verify_checkpoint(cid), cm.last_error
    for seed, mine, _seen in results:
        assert {cm.get_checkpoint(cid)["metadata"]["seed"] for cid in mine} == {seed}


def _save_while_signalled(directory: str, holding, go, out) -> None:
    """Save a model identical to the parent's, pausing just before the manifest commit."""
    from engine.store import store as checkpoint_store

    original = checkpoint_store.CheckpointStore.write_manifest

    def paused(self, body):
        holding.set()
        go.wait(60)
        return original(self, body)

    checkpoint_store.CheckpointStore.write_manifest = paused
    out.put(CheckpointManager(small_model(0), directory).save_checkpoint())


@pytest.mark.slow
def test_deletion_never_removes_files_a_live_save_needs(ctx, tmp_path):
    cm = CheckpointManager(small_model(0), tmp_path)
    old = cm.save_checkpoint()
    holding, go, out = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=_save_while_signalled, args=(str(tmp_path), holding, go, out))
    child.start()
    assert holding.wait(60)  # the child found every tensor already stored and reuses them
    deleter = threading.Thread(target=cm.delete_checkpoint, args=(old,))
    deleter.start()  # waits for the child's save: the lock keeps the shared files alive
    time.sleep(0.3)
    go.set()
    new = out.get(timeout=60)
    child.join()
    deleter.join()
    assert [c["id"] for c in cm.list_checkpoints()] == [new]
    assert cm.verify_checkpoint(new), cm.last_error
