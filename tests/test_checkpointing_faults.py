"""Damaged files: one bad manifest or tensor file costs that checkpoint only, with a clear message."""

from __future__ import annotations

import json

import pytest
import torch

from engine.checkpointing import CheckpointCorrupted, CheckpointManager
from tests.test_checkpointing import perturb, same_state, state


@pytest.fixture
def two_checkpoints(tiny_qwen2, tmp_path):
    """Checkpoints a (original) and b (layer 0 q_proj and one embedding row changed)."""
    cm = CheckpointManager(tiny_qwen2, tmp_path, memory_snapshot=False)
    a = cm.save_checkpoint({"purpose": "a"})
    sa = state(tiny_qwen2)
    perturb(tiny_qwen2)
    b = cm.save_checkpoint({"purpose": "b"})
    sb = state(tiny_qwen2)
    return cm, (a, sa), (b, sb)


def blob_of(cm: CheckpointManager, checkpoint_id: str, name: str):
    body = json.loads((cm.manifest_dir / f"{checkpoint_id}.json").read_text())["body"]
    (rec,) = [t for t in body["tensors"] if name in [t["name"], *t["aliases"]]]
    return cm.checkpoint_dir / "blobs" / rec["hash"][:2] / f"{rec['hash']}.safetensors"


def flip_bit(path, offset_from_end: int = 5) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0x10
    path.write_bytes(bytes(data))


Q = "model.layers.0.self_attn.q_proj.weight"


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "header", "missing"])
def test_damaged_tensor_file_fails_that_checkpoint_only(two_checkpoints, damage):
    cm, (a, sa), (b, sb) = two_checkpoints
    path = blob_of(cm, b, Q)  # q_proj differs between a and b: only b uses this file
    if damage == "bit flip":
        flip_bit(path)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:-7])
    elif damage == "header":
        data = bytearray(path.read_bytes())
        data[12] = ord("#")
        path.write_bytes(bytes(data))
    else:
        path.unlink()
    model = cm.model
    before = state(model)
    assert cm.restore_checkpoint(b) is False
    assert Q in cm.last_error and b in cm.last_error
    assert {"bit flip": "do not match their hash", "truncated": "truncated",
            "header": "header is damaged", "missing": "missing"}[damage] in cm.last_error
    assert same_state(model, before)  # nothing was written
    assert [c["id"] for c in cm.list_checkpoints()] == [a, b]
    assert cm.get_checkpoint(b)["verified"] is False
    assert cm.verify_checkpoint(a) is True
    assert cm.restore_checkpoint(a), cm.last_error
    assert same_state(model, sa)


def test_verify_finds_damage_and_a_save_of_the_same_values_repairs_it(two_checkpoints):
    cm, (a, sa), (b, sb) = two_checkpoints
    flip_bit(blob_of(cm, b, Q))
    assert cm.verify_checkpoint(b) is False
    assert "do not match their hash" in cm.last_error
    # the damaged file was moved aside, so saving a model holding b's values writes it again
    twin = CheckpointManager(cm.model, cm.checkpoint_dir, memory_snapshot=False)
    for name, t in cm.model.state_dict().items():
        t.copy_(sb[name])
    twin.save_checkpoint({"purpose": "repair"})
    assert cm.verify_checkpoint(b) is True
    assert cm.restore_checkpoint(a) and cm.restore_checkpoint(b)
    assert same_state(cm.model, sb)


@pytest.mark.parametrize("damage", ["bit flip", "truncated", "empty", "not json", "other id"])
def test_damaged_manifest_hides_that_checkpoint_only(two_checkpoints, damage):
    cm, (a, sa), (b, sb) = two_checkpoints
    path = cm.manifest_dir / f"{a}.json"
    raw = path.read_bytes()
    if damage == "bit flip":
        i = raw.index(b'"purpose": "a"') + len('"purpose": "')
        path.write_bytes(raw[:i] + b"c" + raw[i + 1:])  # still valid JSON, wrong checksum
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not json":
        path.write_bytes(b"\x00\xff" * 40)
    else:
        path.write_bytes(raw.replace(a.encode(), b.encode()))
    fresh = CheckpointManager(cm.model, cm.checkpoint_dir)
    assert [c["id"] for c in fresh.list_checkpoints()] == [b]
    (bad,) = fresh.damaged_checkpoints()
    assert bad["id"] == a and "manifest" in bad["error"] and "damaged" in bad["error"]
    assert fresh.restore_checkpoint(a) is False
    assert "manifest" in fresh.last_error and a in fresh.last_error
    with pytest.raises(CheckpointCorrupted):
        fresh.get_checkpoint(a)
    assert fresh.restore_checkpoint(b), fresh.last_error
    assert same_state(cm.model, sb)
    # deleting another checkpoint keeps the files a damaged manifest names (it may be repaired)
    assert fresh.delete_checkpoint(b)
    path.write_bytes(raw)
    assert fresh.verify_checkpoint(a) and fresh.restore_checkpoint(a)
    assert same_state(cm.model, sa)


def test_stray_files_in_the_manifest_dir_are_ignored(two_checkpoints):
    cm, (a, _), (b, _) = two_checkpoints
    (cm.manifest_dir / "notes.txt").write_text("hello")
    (cm.manifest_dir / "checkpoint_x.json").write_text("{}")
    assert [c["id"] for c in cm.list_checkpoints()] == [a, b]


def test_nan_model_state_restores_exactly(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path, memory_snapshot=False)
    with torch.no_grad():
        tiny_qwen2.model.norm.weight[1] = float("nan")
        tiny_qwen2.model.norm.weight[2] = float("inf")
    broken = state(tiny_qwen2)
    cid = cm.save_checkpoint({"state": "forensic", "perplexity": float("nan")})
    with torch.no_grad():
        tiny_qwen2.model.norm.weight.fill_(1.0)
    assert cm.restore_checkpoint(cid), cm.last_error
    assert same_state(tiny_qwen2, broken)
