"""The store verifies before it trusts: a damaged tensor file is never reused, always named, repaired
from a copy proven good (the live tensor at save, the host-memory copy after a restore from it)."""

from __future__ import annotations

import json
import os
import time

import torch

from engine.checkpointing import CheckpointManager
from engine.store.manifests import manifest_bytes
from tests.conftest import make_tiny_qwen2

DAMAGED = "model.layers.0.self_attn.q_proj.weight"


def blob_of(cm: CheckpointManager, checkpoint_id: str, name: str = DAMAGED):
    rec = cm.store.read_manifest(checkpoint_id).by_name()[name]
    return cm.store.blobs.path(rec.hash)


def flip_last_byte(path) -> None:
    """A bit flip in the payload, as a failing disk or a stray write leaves it (size unchanged)."""
    with open(path, "r+b") as fh:
        fh.seek(-1, os.SEEK_END)
        byte = fh.read(1)
        fh.seek(-1, os.SEEK_END)
        fh.write(bytes([byte[0] ^ 0x01]))


def restores_from_disk(directory, checkpoint_id: str) -> tuple[bool, str | None]:
    fresh = CheckpointManager(make_tiny_qwen2(seed=9), directory, memory_snapshot=False)
    return fresh.restore_checkpoint(checkpoint_id), fresh.last_error


def test_save_of_same_content_rewrites_a_damaged_file_and_reports_it(tmp_path):
    model = make_tiny_qwen2()
    first = CheckpointManager(model, tmp_path).save_checkpoint()
    flip_last_byte(blob_of(CheckpointManager(model, tmp_path), first))
    cm = CheckpointManager(model, tmp_path)  # as after a restart: nothing proven yet
    second = cm.save_checkpoint()
    assert [(r["checkpoint_id"], r["tensor"]) for r in cm.repairs] == [(second, DAMAGED)]
    assert "differ" in cm.repairs[0]["why"]
    assert cm.get_checkpoint(second)["new_bytes"] == model.get_parameter(DAMAGED).nbytes
    for checkpoint_id in (second, first):  # the repair heals every checkpoint sharing the file
        assert restores_from_disk(tmp_path, checkpoint_id) == (True, None)
    cm.save_checkpoint()
    assert cm.repairs == []


def test_a_proof_remembered_by_a_save_does_not_survive_a_later_write(tmp_path):
    model = make_tiny_qwen2()
    cm = CheckpointManager(model, tmp_path)
    first = cm.save_checkpoint()
    time.sleep(0.3)  # older than the racy window: the next save's proof is remembered
    cm.save_checkpoint()
    assert cm.repairs == []
    flip_last_byte(blob_of(cm, first))
    third = cm.save_checkpoint()
    assert [r["tensor"] for r in cm.repairs] == [DAMAGED]
    assert restores_from_disk(tmp_path, third) == (True, None)


def test_truncated_or_missing_file_is_rewritten_too(tmp_path):
    model = make_tiny_qwen2()
    cm = CheckpointManager(model, tmp_path, memory_snapshot=False)
    first = cm.save_checkpoint()
    path = blob_of(cm, first)
    os.truncate(path, os.path.getsize(path) - 4)
    cm.save_checkpoint()
    assert [r["tensor"] for r in cm.repairs] == [DAMAGED] and "bytes, expected" in cm.repairs[0]["why"]
    assert restores_from_disk(tmp_path, first) == (True, None)


def test_restore_from_disk_names_checkpoint_and_tensor_of_a_damaged_file(tmp_path):
    model = make_tiny_qwen2()
    checkpoint_id = CheckpointManager(model, tmp_path).save_checkpoint()
    flip_last_byte(blob_of(CheckpointManager(model, tmp_path), checkpoint_id))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ok, error = restores_from_disk(tmp_path, checkpoint_id)
    assert not ok and checkpoint_id in error and repr(DAMAGED) in error and "damaged" in error
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_check_and_repair_after_a_restore_served_from_memory(tmp_path):
    model = make_tiny_qwen2()
    cm = CheckpointManager(model, tmp_path)
    held = cm.save_checkpoint()
    flip_last_byte(blob_of(cm, held))
    with torch.no_grad():
        model.get_parameter(DAMAGED).mul_(3.0)
    assert cm.restore_checkpoint(held) and cm.memory_snapshot_id == held
    assert cm.disk_unchecked == {held}
    report = cm.check_and_repair(held)
    assert report["checkpoint_id"] == held and report["damaged"] == []
    assert [r["tensor"] for r in report["repaired"]] == [DAMAGED]
    assert report["checked"] == len({r.hash for r in cm.store.read_manifest(held).tensors})
    assert cm.disk_unchecked == set()
    assert restores_from_disk(tmp_path, held) == (True, None)
    assert cm.check_and_repair(held)["repaired"] == []


def test_check_and_repair_names_what_it_cannot_repair(tmp_path):
    model = make_tiny_qwen2()
    checkpoint_id = CheckpointManager(model, tmp_path).save_checkpoint()
    flip_last_byte(blob_of(CheckpointManager(model, tmp_path), checkpoint_id))
    cm = CheckpointManager(model, tmp_path, memory_snapshot=False)  # holds no copy
    report = cm.check_and_repair(checkpoint_id)
    assert report["repaired"] == [] and [d["tensor"] for d in report["damaged"]] == [DAMAGED]
    assert checkpoint_id in report["damaged"][0]["error"]
    assert not cm.get_checkpoint(checkpoint_id)["verified"]


def test_manifests_carry_a_fast_checksum_and_older_ones_without_it_still_verify(tmp_path):
    model = make_tiny_qwen2()
    cm = CheckpointManager(model, tmp_path)
    checkpoint_id = cm.save_checkpoint()
    path = cm.store.manifest_path(checkpoint_id)
    doc = json.loads(path.read_bytes())
    assert all(len(t["xxh3"]) == 32 for t in doc["body"]["tensors"])
    for t in doc["body"]["tensors"]:
        del t["xxh3"]  # a manifest written before the field existed
    path.write_bytes(manifest_bytes(doc["body"]))
    assert restores_from_disk(tmp_path, checkpoint_id) == (True, None)
    fresh = CheckpointManager(make_tiny_qwen2(seed=3), tmp_path, memory_snapshot=False)
    assert fresh.verify_checkpoint(checkpoint_id)
    flip_last_byte(blob_of(fresh, checkpoint_id))
    assert restores_from_disk(tmp_path, checkpoint_id)[0] is False  # blake3 catches it there
