"""CheckpointManager: the guide's examples, restore exactness, ties, metadata, ids, compare, export."""

from __future__ import annotations

import json
import math
import os
import stat

import pytest
import torch
from safetensors import safe_open

from engine.checkpointing import (
    CheckpointError,
    CheckpointManager,
    CheckpointMismatch,
    InvalidCheckpointId,
    MetadataTooLarge,
)
from tests.conftest import make_tiny_qwen2


def state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(model, saved: dict[str, torch.Tensor]) -> bool:
    """Byte equality (torch.equal is False for NaN, so compare integer views)."""
    now = model.state_dict()
    return now.keys() == saved.keys() and all(
        torch.equal(_bytes(now[k]), _bytes(saved[k])) for k in saved
    )


def _bytes(t: torch.Tensor) -> torch.Tensor:
    return t.detach().contiguous().reshape(-1).view(torch.uint8)


def perturb(model, scale: float = 1.5) -> None:
    with torch.no_grad():
        model.model.layers[0].self_attn.q_proj.weight.mul_(scale)
        model.model.embed_tokens.weight[3].add_(1.0)


# ---------------------------------------------------------------- the guide, verbatim


def test_guide_basic_metadata_restore_workflow_comparison(tiny_qwen2, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    model = tiny_qwen2
    from engine.checkpointing import CheckpointManager

    # Initialize
    checkpointer = CheckpointManager(
        model=model,
        checkpoint_dir="data/checkpoints"
    )

    # Save checkpoint
    checkpoint_id = checkpointer.save_checkpoint(
        metadata={
            "purpose": "Before attention head modification",
            "experiment": "exp_001",
            "baseline": True
        }
    )

    print(f"Checkpoint saved: {checkpoint_id}")
    # Output: checkpoint_20251107_031500_a1b2c3d4
    assert capsys.readouterr().out.startswith("Checkpoint saved: checkpoint_")
    original = state(model)

    metadata = {
        "purpose": "Baseline before Layer 5 attention modification",
        "experiment": "attention_head_specialization_001",
        "state": "baseline",
        "notes": "Model performing well on all metrics"
    }
    checkpointer.save_checkpoint(metadata=metadata)

    # List available checkpoints
    checkpoints = checkpointer.list_checkpoints()
    print(f"Available checkpoints: {len(checkpoints)}")

    for cp in checkpoints:
        print(f"  {cp['id']}: {cp['metadata'].get('purpose', 'No description')}")

    perturb(model)
    # Restore specific checkpoint
    success = checkpointer.restore_checkpoint(checkpoint_id)

    if success:
        print("✓ Checkpoint restored successfully")
        # Model is now in the exact state it was when checkpoint was created
    else:
        print("✗ Restore failed - check logs")
    out = capsys.readouterr().out
    assert "Available checkpoints: 2" in out
    assert "Baseline before Layer 5 attention modification" in out
    assert "✓ Checkpoint restored successfully" in out
    assert same_state(model, original)

    def modify_weights():
        perturb(model, 3.0)

    def test_model():
        return {"success": False}

    # 1. Create baseline checkpoint
    baseline_id = checkpointer.save_checkpoint(
        metadata={"state": "baseline", "purpose": "Pre-modification"}
    )

    # 2. Make modification
    try:
        # Your modification code here
        modify_weights()

        # 3. Test modification
        result = test_model()

        if result['success']:
            # 4. Save successful state
            checkpointer.save_checkpoint(
                metadata={"state": "modified", "result": "success"}
            )
            print("✓ Modification successful - keeping changes")
        else:
            # 5. Rollback if unsuccessful
            checkpointer.restore_checkpoint(baseline_id)
            print("✗ Modification unsuccessful - rolled back")

    except Exception as e:
        # 6. Emergency rollback on error
        print(f"🚨 ERROR: {e}")
        checkpointer.restore_checkpoint(baseline_id)
        print("Emergency rollback complete")
    assert "rolled back" in capsys.readouterr().out
    assert same_state(model, original)

    perturb(model, 2.0)
    modified_id = checkpointer.save_checkpoint(metadata={"state": "modified"})
    # Compare two checkpoints
    comparison = checkpointer.compare_checkpoints(
        checkpoint_id_1=baseline_id,
        checkpoint_id_2=modified_id
    )

    print(f"Differences found: {comparison['num_differences']}")
    for diff in comparison['differences'][:5]:  # Show first 5
        print(f"  {diff['layer']}: {diff['change']:.6f}")
    out = capsys.readouterr().out
    assert "Differences found: 2" in out
    assert "model.layers.0.self_attn.q_proj.weight" in out
    assert checkpointer.list_checkpoints()[-1]["id"] == modified_id
    assert checkpointer.get_disk_usage() > 0


def test_guide_automatic_checkpointing(tiny_qwen2, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tiny_qwen2
    params = [p for _, p in model.named_parameters()]

    def modify_layer(i):
        params[i % len(params)].data.mul_(1.01)

    from engine.checkpointing import AutoCheckpointer

    # Create auto-checkpointing wrapper
    auto_cp = AutoCheckpointer(
        model=model,
        checkpoint_dir="data/auto_checkpoints",
        frequency=10,  # Checkpoint every 10 modifications
        max_checkpoints=20  # Keep only last 20
    )

    # Now modifications are automatically checkpointed
    with auto_cp:
        for i in range(50):
            modify_layer(i)
            # Automatic checkpoint every 10 iterations

    assert auto_cp.modifications == 50
    listed = CheckpointManager(model, "data/auto_checkpoints").list_checkpoints()
    assert [c["id"] for c in listed] == auto_cp.checkpoints
    assert len(listed) == 5
    assert [c["metadata"]["modifications"] for c in listed] == [10, 20, 30, 40, 50]


# ---------------------------------------------------------------- save / restore


def test_restore_is_exact_and_ties_survive(tiny_qwen2, tmp_path):
    model = tiny_qwen2
    assert model.lm_head.weight is model.model.embed_tokens.weight
    cm = CheckpointManager(model, tmp_path, memory_snapshot=False)
    saved = state(model)
    cid = cm.save_checkpoint()
    perturb(model)
    assert not same_state(model, saved)
    assert cm.restore_checkpoint(cid), cm.last_error
    assert same_state(model, saved)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert (model.lm_head.weight.untyped_storage().data_ptr()
            == model.model.embed_tokens.weight.untyped_storage().data_ptr())
    with torch.no_grad():
        model.model.embed_tokens.weight[0, 0] = 42.0
    assert model.lm_head.weight[0, 0].item() == 42.0
    entry = cm.get_checkpoint(cid)
    assert entry["verified"] is True
    # the tied tensor is stored once
    embed_bytes = model.model.embed_tokens.weight.nbytes
    assert entry["size_bytes"] == sum(t.nbytes for t in {id(p): p for p in model.parameters()}.values())
    assert entry["size_bytes"] < sum(t.nbytes for t in model.state_dict().values()) - embed_bytes + 1


def test_files_are_standard_safetensors_and_private(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path / "ck")
    cm.save_checkpoint({"purpose": "x"})
    blobs = list((tmp_path / "ck" / "blobs").rglob("*.safetensors"))
    assert blobs
    for path in blobs:
        with safe_open(str(path), framework="pt") as f:
            (key,) = f.keys()
            assert f.get_tensor(key).numel() >= 1
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for d in [tmp_path / "ck", *[p for p in (tmp_path / "ck").rglob("*") if p.is_dir()]]:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700
    (manifest,) = cm.manifest_dir.iterdir()
    assert json.loads(manifest.read_text())["body"]["metadata"] == {"purpose": "x"}


def test_incremental_save_writes_only_changed_tensors(tiny_qwen2, tmp_path):
    for snapshot in (True, False):
        cm = CheckpointManager(tiny_qwen2, tmp_path / str(snapshot), memory_snapshot=snapshot)
        first = cm.get_checkpoint(cm.save_checkpoint())
        assert first["new_bytes"] > 0
        assert cm.get_checkpoint(cm.save_checkpoint())["new_bytes"] == 0
        w = tiny_qwen2.model.layers[1].mlp.down_proj.weight
        w.data[0, 0] += 1.0  # a .data write: no version-counter bump, must still be seen
        third = cm.get_checkpoint(cm.save_checkpoint())
        assert third["new_bytes"] == w.nbytes


def test_nan_tensors_dedupe_by_bytes(tmp_path):
    model = make_tiny_qwen2(layers=1)
    with torch.no_grad():
        model.model.embed_tokens.weight[0] = float("nan")
    cm = CheckpointManager(model, tmp_path)
    a = cm.save_checkpoint()
    b = cm.save_checkpoint()
    assert cm.get_checkpoint(b)["new_bytes"] == 0  # NaN != NaN, but the bytes are identical
    assert cm.compare_checkpoints(a, b)["num_differences"] == 0
    with torch.no_grad():  # another NaN payload is another tensor
        bits = model.model.embed_tokens.weight.view(torch.int32)
        bits[0, 0] = 0x7FC00001
    c = cm.save_checkpoint()
    assert cm.get_checkpoint(c)["new_bytes"] == model.model.embed_tokens.weight.nbytes
    cm.release_memory_snapshot()
    assert cm.restore_checkpoint(a)
    assert model.model.embed_tokens.weight.view(torch.int32)[0, 0].item() != 0x7FC00001


def test_buffers_and_dtypes_round_trip(tmp_path):
    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w16 = torch.nn.Parameter(torch.randn(3, 5).to(torch.bfloat16))
            self.w_half = torch.nn.Parameter(torch.randn(4).half())
            self.register_buffer("steps", torch.tensor(7, dtype=torch.int64))
            self.register_buffer("mask", torch.tensor([True, False, True]))
            self.register_buffer("scratch", torch.ones(2), persistent=False)
            self.empty = torch.nn.Parameter(torch.empty(0, 4))
            self.view = torch.nn.Parameter(torch.randn(6, 4)[:, 1])  # non-contiguous

    m = Odd()
    saved = state(m)
    cm = CheckpointManager(m, tmp_path)
    cid = cm.save_checkpoint()
    with torch.no_grad():
        for t in m.state_dict().values():
            t.zero_() if t.dtype != torch.bool else t.logical_not_()
    m.scratch.fill_(5)
    cm.release_memory_snapshot()
    assert cm.restore_checkpoint(cid), cm.last_error
    assert same_state(m, saved)
    assert m.scratch.tolist() == [5.0, 5.0]  # non-persistent buffers are not state


def test_restore_from_memory_reads_no_disk(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    saved = state(tiny_qwen2)
    cid = cm.save_checkpoint()
    assert cm.memory_snapshot_id == cid
    unique = {id(t): t for t in tiny_qwen2.parameters()}.values()
    # one copy of the unique tensor bytes (equal tensors, e.g. fresh norm weights, once)
    assert 0 < cm.memory_snapshot_bytes <= sum(t.nbytes for t in unique)
    perturb(tiny_qwen2)
    blob_dir = tmp_path / "blobs"
    blob_dir.rename(tmp_path / "elsewhere")  # the disk copy is gone
    try:
        assert cm.restore_checkpoint(cid), cm.last_error
    finally:
        (tmp_path / "elsewhere").rename(blob_dir)
    assert same_state(tiny_qwen2, saved)


def test_hold_in_memory_pins_the_good_state(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    good = cm.save_checkpoint({"health": "OK"})
    good_state = state(tiny_qwen2)
    cm.hold_in_memory(good)
    perturb(tiny_qwen2)
    forensic = cm.save_checkpoint({"state": "forensic"})
    assert cm.memory_snapshot_id == good  # a later save does not displace a pinned state
    (tmp_path / "blobs").rename(tmp_path / "away")
    try:
        assert cm.restore_checkpoint(good), cm.last_error
        assert not cm.restore_checkpoint(forensic)  # not in memory, and its files are away
    finally:
        (tmp_path / "away").rename(tmp_path / "blobs")
    assert same_state(tiny_qwen2, good_state)
    cm.hold_in_memory(forensic)  # loads from disk, reusing the unchanged tensors
    assert cm.memory_snapshot_id == forensic
    assert cm.list_checkpoints()[-1]["in_memory"]
    cm.release_memory_snapshot()
    assert cm.memory_snapshot_id is None and cm.memory_snapshot_bytes == 0


def test_another_architecture_is_refused_with_what_differs(tmp_path, tiny_llama):
    small = make_tiny_qwen2(layers=2)
    cm = CheckpointManager(small, tmp_path)
    cid = cm.save_checkpoint()
    other = CheckpointManager(make_tiny_qwen2(layers=3, seed=1), tmp_path)
    before = state(other.model)
    assert other.restore_checkpoint(cid) is False
    assert "does not fit this model" in other.last_error
    assert "12 tensors of this model are missing from the checkpoint" in other.last_error
    assert "model.layers.2.self_attn.q_proj.weight" in other.last_error
    assert "Qwen2ForCausalLM" in other.last_error
    assert same_state(other.model, before)

    llama = CheckpointManager(tiny_llama, tmp_path)
    assert llama.restore_checkpoint(cid) is False
    assert "tensors of the checkpoint are not in this model" in llama.last_error
    assert "model.layers.0.self_attn.q_proj.bias" in llama.last_error  # Qwen2 has q/k/v biases
    assert "this model is LlamaForCausalLM" in llama.last_error

    wide = CheckpointManager(make_tiny_qwen2(layers=2).to(torch.float16), tmp_path)
    assert not wide.restore_checkpoint(cid)
    assert "dtype F32 in the checkpoint, F16 in the model" in wide.last_error


def test_untied_checkpoint_into_tied_model(tmp_path, tiny_qwen2_untied, tiny_qwen2):
    cm = CheckpointManager(tiny_qwen2_untied, tmp_path)
    cid = cm.save_checkpoint()
    tied = CheckpointManager(tiny_qwen2, tmp_path)
    assert not tied.restore_checkpoint(cid)
    assert "one tied tensor in this model but hold different values" in tied.last_error
    # the other way round fits: the tied values land in both untied tensors
    tid = tied.save_checkpoint()
    assert cm.restore_checkpoint(tid), cm.last_error
    u = tiny_qwen2_untied
    assert torch.equal(u.lm_head.weight, u.model.embed_tokens.weight)
    assert u.lm_head.weight is not u.model.embed_tokens.weight


# ---------------------------------------------------------------- metadata


def test_metadata_is_stored_faithfully(tiny_qwen2, tmp_path):
    weird = {
        "purpose": "[bold red]markup[/] \x1b[31mANSI\x1b[0m \u202e rtl ✓ 🚨 \x00 nul",
        "nested": {"list": [1, 2.5, None, True, "x"], "nan": float("nan")},
        "tags": ["forensic", "nan"],
        "big": 10**30,
    }
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    cid = cm.save_checkpoint(weird)
    got = CheckpointManager(tiny_qwen2, tmp_path).get_checkpoint(cid)["metadata"]
    assert got["purpose"] == weird["purpose"]
    assert got["nested"]["list"] == weird["nested"]["list"]
    assert math.isnan(got["nested"]["nan"])
    assert got["big"] == 10**30 and got["tags"] == ["forensic", "nan"]
    got["purpose"] = "mutated"  # callers get a copy, nested parts included
    got["nested"]["list"].append("added")
    again = cm.get_checkpoint(cid)["metadata"]
    assert again["purpose"] == weird["purpose"] and again["nested"]["list"] == weird["nested"]["list"]
    assert cm.save_checkpoint() and cm.list_checkpoints()[-1]["metadata"] == {}


def test_bad_metadata_is_refused_before_writing(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    with pytest.raises(TypeError, match=r"metadata\['t'\] is a torch.Tensor"):
        cm.save_checkpoint({"t": torch.zeros(1)})
    with pytest.raises(TypeError, match="must be a dict"):
        cm.save_checkpoint(["purpose"])
    with pytest.raises(MetadataTooLarge, match="limit"):
        cm.save_checkpoint({"log": "x" * (1 << 20)})
    assert cm.list_checkpoints() == []
    assert not any((tmp_path / "blobs").iterdir())


# ---------------------------------------------------------------- ids


BAD_IDS = [
    "",
    "../../etc/passwd",
    "/etc/passwd",
    "checkpoint_20251107_031500_a1b2c3d4/../../x",
    "checkpoint_20251107_031500_A1B2C3D4",
    "checkpoint_20251107_031500_a1b2c3d",
    "checkpoint_20251107_031500_a1b2c3d4\n",
    "checkpoint_2025११07_031500_a1b2c3d4",  # Devanagari digits
    "checkpoint_20251107_031500_a1b2c3d４",  # fullwidth 4
    "сheckpoint_20251107_031500_a1b2c3d4",  # Cyrillic с
    None,
    12,
]


@pytest.mark.parametrize("bad", BAD_IDS, ids=range(len(BAD_IDS)))
def test_bad_ids_are_refused(tiny_qwen2, tmp_path, bad):
    cm = CheckpointManager(tiny_qwen2, tmp_path / "ck")
    assert cm.restore_checkpoint(bad) is False
    assert "not a checkpoint id" in cm.last_error
    assert cm.verify_checkpoint(bad) is False
    for call in (cm.get_checkpoint, cm.delete_checkpoint, cm.hold_in_memory, cm.compare_with_model):
        with pytest.raises(InvalidCheckpointId):
            call(bad)
    with pytest.raises(InvalidCheckpointId):
        cm.export_safetensors(bad, tmp_path / "x.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]


def test_unknown_but_wellformed_id(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    ghost = "checkpoint_20251107_031500_a1b2c3d4"
    assert cm.restore_checkpoint(ghost) is False
    assert "no checkpoint" in cm.last_error
    with pytest.raises(InvalidCheckpointId):
        cm.get_checkpoint(ghost)
    assert cm.delete_checkpoint(ghost) is False


# ---------------------------------------------------------------- compare


def test_compare_reports_largest_first_and_skips_identical(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    a = cm.save_checkpoint()
    with torch.no_grad():
        tiny_qwen2.model.layers[0].mlp.up_proj.weight.add_(0.01)
        tiny_qwen2.model.layers[1].mlp.up_proj.weight.add_(1.0)
    b = cm.save_checkpoint()
    cmp = cm.compare_checkpoints(a, b)
    assert cmp["checkpoint_id_1"] == a and cmp["checkpoint_id_2"] == b
    layers = [d["layer"] for d in cmp["differences"]]
    assert layers == ["model.layers.1.mlp.up_proj.weight", "model.layers.0.mlp.up_proj.weight"]
    big = cmp["differences"][0]
    n = tiny_qwen2.model.layers[1].mlp.up_proj.weight.numel()
    assert big["change"] == pytest.approx(math.sqrt(n), rel=1e-4)
    assert big["max_abs_change"] == pytest.approx(1.0, rel=1e-4)
    assert big["relative"] > 0

    live = cm.compare_with_model(a)
    assert live["checkpoint_id_2"] == "current" and live["num_differences"] == 2
    assert cm.compare_with_model(b)["num_differences"] == 0
    # identical hashes are not read: comparing works with the tensor files gone
    (tmp_path / "blobs").rename(tmp_path / "away")
    assert cm.compare_checkpoints(b, b)["num_differences"] == 0
    (tmp_path / "away").rename(tmp_path / "blobs")


def test_compare_other_architecture_lists_structure(tmp_path):
    cm = CheckpointManager(make_tiny_qwen2(layers=2), tmp_path)
    a = cm.save_checkpoint()
    b = CheckpointManager(make_tiny_qwen2(layers=3), tmp_path).save_checkpoint()
    cmp = cm.compare_checkpoints(a, b)
    notes = {d["layer"]: d.get("note") for d in cmp["differences"]}
    assert notes["model.layers.2.mlp.up_proj.weight"] == "only in checkpoint_id_2"
    assert math.isinf(cmp["differences"][0]["change"])


# ---------------------------------------------------------------- delete, usage, export


def test_delete_keeps_shared_tensors_of_others(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path, memory_snapshot=False)
    a = cm.save_checkpoint()
    perturb(tiny_qwen2)
    b = cm.save_checkpoint()
    usage = cm.get_disk_usage()
    assert cm.delete_checkpoint(a) is True
    assert cm.delete_checkpoint(a) is False
    assert [c["id"] for c in cm.list_checkpoints()] == [b]
    assert cm.verify_checkpoint(b), cm.last_error
    assert cm.get_disk_usage() < usage
    before = state(tiny_qwen2)
    perturb(tiny_qwen2)
    assert cm.restore_checkpoint(b) and same_state(tiny_qwen2, before)
    assert cm.delete_checkpoint(b)
    assert not list((tmp_path / "blobs").rglob("*.safetensors"))


def test_export_safetensors_and_pretrained(tiny_qwen2, tmp_path):
    from safetensors.torch import load_model
    from transformers import AutoModelForCausalLM

    cm = CheckpointManager(tiny_qwen2, tmp_path / "ck")
    saved = state(tiny_qwen2)
    cid = cm.save_checkpoint({"purpose": "export me"})
    perturb(tiny_qwen2)

    path = cm.export_safetensors(cid, tmp_path / "out" / "one.safetensors")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    with safe_open(str(path), framework="pt") as f:
        assert "model.embed_tokens.weight" in f.keys()
        assert json.loads(f.metadata()["redline.metadata"]) == {"purpose": "export me"}
    fresh = make_tiny_qwen2(seed=5)
    load_model(fresh, str(path))
    assert same_state(fresh, saved)

    out = cm.export_pretrained(cid, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert same_state(loaded, saved)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with pytest.raises(CheckpointError, match="not an empty directory"):
        cm.export_pretrained(cid, tmp_path / "hf")


def test_export_pretrained_refuses_a_checkpoint_of_another_model(tmp_path):
    cid = CheckpointManager(make_tiny_qwen2(layers=3), tmp_path).save_checkpoint()
    cm = CheckpointManager(make_tiny_qwen2(layers=2), tmp_path)
    with pytest.raises(CheckpointMismatch):
        cm.export_pretrained(cid, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_meta_model_is_refused_clearly(tmp_path):
    with torch.device("meta"):
        model = torch.nn.Linear(4, 4)
    with pytest.raises(CheckpointError, match="meta device"):
        CheckpointManager(model, tmp_path).save_checkpoint()
    assert os.listdir(tmp_path / "manifests") == []


def test_cyclic_metadata_is_a_clear_type_error(tiny_qwen2, tmp_path):
    meta: dict = {"a": []}
    meta["a"].append(meta)
    with pytest.raises(TypeError, match="cycle"):
        CheckpointManager(tiny_qwen2, tmp_path).save_checkpoint(meta)


def test_an_id_taken_in_the_same_second_is_redrawn(tiny_qwen2, tmp_path, monkeypatch):
    import engine.checkpointing as checkpointing

    cm = CheckpointManager(tiny_qwen2, tmp_path)
    first = cm.save_checkpoint({"n": 1})
    draws = iter([first, first, "checkpoint_20990101_000000_0000beef"])
    monkeypatch.setattr(checkpointing, "new_id", lambda now: next(draws))
    second = cm.save_checkpoint({"n": 2})
    assert second == "checkpoint_20990101_000000_0000beef"
    assert cm.get_checkpoint(first)["metadata"] == {"n": 1}
    assert cm.get_checkpoint(second)["metadata"] == {"n": 2}


def test_a_store_given_to_the_manager_is_the_one_it_uses(tiny_qwen2, tmp_path):
    from engine.store.interface import CheckpointStorage
    from engine.store.store import CheckpointStore

    store = CheckpointStore(tmp_path / "elsewhere", durable=False)
    assert isinstance(store, CheckpointStorage)
    cm = CheckpointManager(tiny_qwen2, None, store=store)
    assert cm.store is store and cm.checkpoint_dir == tmp_path / "elsewhere"
    assert cm.watch_path == cm.manifest_dir == store.watch_path
    before = set(os.listdir(cm.watch_path))
    saved = state(tiny_qwen2)
    cid = cm.save_checkpoint({"n": 1})
    assert set(os.listdir(cm.watch_path)) - before == {f"{cid}.json"}  # a save shows where watchers look
    perturb(tiny_qwen2)
    assert cm.restore_checkpoint(cid), cm.last_error
    assert same_state(tiny_qwen2, saved)
    assert cm.delete_checkpoint(cid) and os.listdir(cm.watch_path) == []
