"""The engine's side of checkpoint integrity, on a real engine: a restore served from host memory is
followed by a check of that checkpoint's files (repaired from memory, alerted), and a read-only
engine leaves an existing run directory exactly as it found it."""

from __future__ import annotations

import os
from pathlib import Path

from engine.checkpointing import CheckpointManager
from engine.commands import Compare, Restore
from engine.events import CheckpointList
from tests.conftest import make_tiny_qwen2
from tests.engine_harness import engines, start_engine, tiny_model_dir  # noqa: F401
from tests.test_checkpoint_integrity import DAMAGED, flip_last_byte


def test_restore_from_memory_is_followed_by_a_check_that_repairs_the_disk_copy(engines, tiny_model_dir, tmp_path):
    driver = engines(tiny_model_dir, tmp_path / "run")
    checkpoints = driver.core.checkpoints
    baseline = driver.of(CheckpointList)[-1].checkpoints[0].id
    assert checkpoints.memory_snapshot_id == baseline
    rec = checkpoints.store.read_manifest(baseline).by_name()[DAMAGED]
    flip_last_byte(checkpoints.store.blobs.path(rec.hash))

    assert driver.command(Restore(checkpoint_id=baseline)).ok  # from memory: no file is read
    driver.wait_until(lambda: any(baseline in m and DAMAGED in m and "host memory" in m
                                  for m in driver.alert_messages("HIGH")))
    fresh = CheckpointManager(make_tiny_qwen2(seed=5), tmp_path / "run" / "checkpoints", memory_snapshot=False)
    assert fresh.restore_checkpoint(baseline), fresh.last_error


def tree(root: Path) -> dict[str, tuple]:
    """Every path under `root` with its type, size and modification time."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = os.lstat(path)
            out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns)
    st = os.lstat(root)
    out["."] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return out


def test_readonly_engine_writes_nothing_into_an_existing_run_directory(tiny_model_dir, tmp_path):
    run_dir = tmp_path / "run"
    writer = start_engine(tiny_model_dir, run_dir)
    writer.engine.shutdown(timeout=60)
    assert not writer.engine.is_alive()
    store = run_dir / "checkpoints"
    (store / "lock").unlink()  # copied elsewhere with its checkpoints only,
    (store / "tmp").rmdir()
    some_blob = next((store / "blobs").glob("*/*.safetensors"))
    leftover = some_blob.parent / ("0" * 64 + ".safetensors")
    leftover.write_bytes(some_blob.read_bytes())  # and a crashed save's blob that a writer would collect
    before = tree(run_dir)
    assert any(name.startswith("checkpoints/manifests/") for name in before)

    reader = start_engine(tiny_model_dir, run_dir, readonly=True)
    try:
        listed = reader.of(CheckpointList)[-1].checkpoints
        assert len(listed) == 2  # the baseline and the final checkpoint, read from disk
        assert reader.command(Compare(checkpoint_a=listed[0].id, checkpoint_b=listed[1].id)).ok
        reader.wait_until(lambda: reader.core.health.due is False)
    finally:
        reader.engine.shutdown(timeout=60)
    assert not reader.engine.is_alive()
    assert tree(run_dir) == before
