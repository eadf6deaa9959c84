"""AutoCheckpointer: detects in-place parameter writes by itself, counts, saves, retains."""

from __future__ import annotations

import pytest
import torch

from engine.checkpointing import AutoCheckpointer, CheckpointManager
from tests.test_checkpointing import same_state, state

WRITES = {
    ".data mul_": lambda m: m.model.layers[0].mlp.up_proj.weight.data.mul_(1.1),
    "no_grad mul_": lambda m: _no_grad(lambda: m.model.layers[0].mlp.up_proj.weight.mul_(1.1)),
    "copy_": lambda m: _no_grad(lambda: m.model.norm.weight.copy_(torch.full((32,), 2.0))),
    "setitem": lambda m: m.model.layers[1].self_attn.q_proj.bias.data.__setitem__(0, 5.0),
    "slice view": lambda m: m.model.layers[1].mlp.down_proj.weight.data[3].fill_(0.5),
    "nn.init": lambda m: torch.nn.init.normal_(m.model.layers[1].mlp.gate_proj.weight),
    "out=": lambda m: torch.add(m.model.norm.weight.data, 1, out=m.model.norm.weight.data),
    "foreach": lambda m: torch._foreach_add_([p.data for p in m.model.layers[0].parameters()], 1.0),
    "iadd": lambda m: _no_grad(lambda: m.model.norm.weight.__iadd__(1.0)),
    "tied embed": lambda m: m.model.embed_tokens.weight.data.mul_(0.5),
    "tied lm_head": lambda m: m.lm_head.weight.data.add_(0.5),
}


def _no_grad(fn):
    with torch.no_grad():
        return fn()


@pytest.mark.parametrize("route", list(WRITES))
def test_every_write_route_counts_once(tiny_qwen2, tmp_path, route):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=1000)
    with auto:
        WRITES[route](tiny_qwen2)
    assert auto.modifications == 1


def test_reads_forward_and_other_tensors_do_not_count(tiny_qwen2, tmp_path):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=1)
    w = tiny_qwen2.model.layers[0].mlp.up_proj.weight
    with auto:
        with torch.no_grad():
            tiny_qwen2(torch.tensor([[1, 2, 3]]))
            copy = w.clone()
            copy.mul_(3)  # a copy of a parameter is not the parameter
            total = w.sum()
            scratch = torch.zeros(4)
            scratch.add_(total)
    assert auto.modifications == 0 and auto.checkpoints == []


def test_writes_outside_the_block_are_not_counted(tiny_qwen2, tmp_path):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=1)
    WRITES[".data mul_"](tiny_qwen2)
    with auto:
        pass
    WRITES[".data mul_"](tiny_qwen2)
    assert auto.modifications == 0


def test_modification_groups_writes(tiny_qwen2, tmp_path):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=2)

    @auto.modification()
    def orthogonalise(m):
        torch.nn.init.orthogonal_(m.model.layers[0].mlp.up_proj.weight)  # several in-place ops

    with auto:
        with auto.modification():
            WRITES[".data mul_"](tiny_qwen2)
            WRITES["copy_"](tiny_qwen2)
            with auto.modification():  # nesting stays one
                WRITES["slice view"](tiny_qwen2)
        assert auto.modifications == 1 and auto.checkpoints == []
        orthogonalise(tiny_qwen2)
        assert auto.modifications == 2 and len(auto.checkpoints) == 1
        with auto.modification():
            pass  # nothing written: not a modification
    assert auto.modifications == 2


def test_checkpoint_holds_the_state_at_the_nth_modification(tiny_qwen2, tmp_path):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=3, metadata={"experiment": "e1"})
    snapshots = []
    with auto:
        for i in range(7):
            WRITES[".data mul_"](tiny_qwen2)
            if (i + 1) % 3 == 0:
                snapshots.append(state(tiny_qwen2))
    assert auto.modifications == 7
    assert len(auto.checkpoints) == 2  # nothing spurious on exit for the trailing 1
    cm = auto.manager
    meta = cm.get_checkpoint(auto.checkpoints[-1])["metadata"]
    assert meta["state"] == "auto" and meta["experiment"] == "e1" and meta["modifications"] == 6
    for cid, expected in zip(auto.checkpoints, snapshots):
        assert cm.restore_checkpoint(cid), cm.last_error
        assert same_state(tiny_qwen2, expected)


def test_retention_deletes_only_its_own_older_checkpoints(tiny_qwen2, tmp_path):
    manual = CheckpointManager(tiny_qwen2, tmp_path)
    baseline = manual.save_checkpoint({"state": "baseline"})
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=2, max_checkpoints=3)
    made = []
    with auto:
        for i in range(12):
            WRITES[".data mul_"](tiny_qwen2)
            if auto.checkpoints and auto.checkpoints[-1] not in made:
                made.append(auto.checkpoints[-1])
    assert len(made) == 6
    assert auto.checkpoints == made[-3:]
    listed = [c["id"] for c in manual.list_checkpoints()]
    assert listed == [baseline, *made[-3:]]
    for cid in listed:
        assert manual.verify_checkpoint(cid), manual.last_error


def test_no_save_on_error_exit_and_restore_is_not_a_modification(tiny_qwen2, tmp_path):
    auto = AutoCheckpointer(tiny_qwen2, tmp_path, frequency=2)
    base = auto.manager.save_checkpoint()
    with pytest.raises(RuntimeError, match="boom"):
        with auto:
            WRITES[".data mul_"](tiny_qwen2)
            assert auto.manager.restore_checkpoint(base)
            assert auto.modifications == 1
            raise RuntimeError("boom")
    assert auto.checkpoints == []
    assert [c["id"] for c in auto.manager.list_checkpoints()] == [base]


def test_arguments_are_checked(tiny_qwen2, tmp_path):
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="frequency"):
            AutoCheckpointer(tiny_qwen2, tmp_path, frequency=bad)
    with pytest.raises(ValueError, match="max_checkpoints"):
        AutoCheckpointer(tiny_qwen2, tmp_path, max_checkpoints=0)
    with pytest.raises(TypeError, match="JSON"):
        AutoCheckpointer(tiny_qwen2, tmp_path, metadata={"x": object()})
    auto = AutoCheckpointer(tiny_qwen2, tmp_path)
    with auto, pytest.raises(RuntimeError, match="re-entrant"):
        with auto:
            pass


def test_shares_an_existing_manager(tiny_qwen2, tmp_path):
    cm = CheckpointManager(tiny_qwen2, tmp_path)
    auto = AutoCheckpointer(tiny_qwen2, None, frequency=1, manager=cm)
    with auto:
        WRITES["copy_"](tiny_qwen2)
    assert cm.memory_snapshot_id == auto.checkpoints[-1]
    with pytest.raises(ValueError, match="same model"):
        AutoCheckpointer(torch.nn.Linear(2, 2), None, manager=cm)
