"""A save killed between its blob writes and its manifest: the blobs it wrote are garbage, but only
once no save can still commit them. Real processes, real SIGKILL, the real store and lock."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest
import torch

from engine.checkpointing import CheckpointManager
from engine.store.store import CheckpointStore
from tests.reliability.crash_children import save_paused_before_commit, small_model
from tests.reliability.helpers import changed


@pytest.fixture(scope="module")
def ctx():
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["torch", "engine.checkpointing", "tests.reliability.crash_children"])
    return context


def blob_hashes(store: CheckpointStore) -> set[str]:
    return {p.name.removesuffix(".safetensors") for p in store.blob_dir.glob("*/*") if p.is_file()}


def start_paused_save(ctx, run_dir, seed: int):
    paused, resume, saved = ctx.Event(), ctx.Event(), ctx.Queue()
    child = ctx.Process(target=save_paused_before_commit, args=(str(run_dir), seed, paused, resume, saved))
    child.start()
    assert paused.wait(120), "the child never reached its commit"
    return child, resume, saved


def test_sigkill_after_blobs_before_manifest_leaves_exactly_the_referenced_blobs(ctx, tmp_path, ledger):
    kept = CheckpointManager(small_model(0), tmp_path / "checkpoints")
    kept_id = kept.save_checkpoint()
    child, _resume, _saved = start_paused_save(ctx, tmp_path, seed=7)
    store = CheckpointStore(tmp_path / "checkpoints")  # the child holds the lock: nothing collected yet
    written = blob_hashes(store) - store.referenced_blobs()
    assert written, "the child wrote no blob of its own before its commit"
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL

    reopened = CheckpointManager(small_model(1), tmp_path / "checkpoints")  # opening collects crash leftovers
    store = reopened.store
    collected = not (written & blob_hashes(store)) and blob_hashes(store) == store.referenced_blobs()
    kept_restorable = reopened.restore_checkpoint(kept_id)
    ledger.fault("SIGKILL between a save's blob writes and its manifest", detected=collected,
                 lost=0 if kept_restorable else 1)
    assert collected, "opening left blobs no manifest references"
    assert not any(store.tmp_dir.iterdir())
    assert kept_restorable, reopened.last_error


def test_opening_or_collecting_never_takes_the_blobs_of_a_save_in_progress(ctx, tmp_path):
    child, resume, saved = start_paused_save(ctx, tmp_path, seed=3)
    store = CheckpointStore(tmp_path / "checkpoints")  # opens while the child's save holds the lock
    pending = blob_hashes(store)
    assert pending and store.referenced_blobs() == set()
    busy = store.collect_garbage(wait=False)
    assert busy.skipped and not busy.blobs and blob_hashes(store) == pending
    resume.set()
    checkpoint_id, fingerprint = saved.get(timeout=120)
    child.join(60)
    assert child.exitcode == 0
    garbage = store.collect_garbage()  # nothing runs now: nothing to collect either
    assert garbage.blobs == [] and not garbage.skipped
    cm = CheckpointManager(small_model(1), tmp_path / "checkpoints")
    assert cm.restore_checkpoint(checkpoint_id), cm.last_error
    assert changed(fingerprint, cm.model) == 0


def test_collect_garbage_dry_run_lists_and_removes_nothing(tmp_path):
    cm = CheckpointManager(small_model(0), tmp_path)
    first = cm.save_checkpoint()
    with torch.no_grad():
        cm.model[2].weight.add_(1.0)
    second = cm.save_checkpoint()
    only_first = set(h.hash for h in cm.store.read_manifest(first).tensors) - set(
        h.hash for h in cm.store.read_manifest(second).tensors)
    cm.store._unlink_manifest(first)  # as a crash of delete() between its two steps leaves it
    before = blob_hashes(cm.store)
    plan = cm.store.collect_garbage(dry_run=True)
    assert plan.dry_run and {p.name.removesuffix(".safetensors") for p, _ in plan.blobs} == only_first
    assert plan.freed_bytes == sum(size for _p, size in plan.blobs) > 0
    assert blob_hashes(cm.store) == before
    cm.store.collect_garbage()
    assert blob_hashes(cm.store) == before - only_first
    assert cm.restore_checkpoint(second), cm.last_error
