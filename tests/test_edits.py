"""engine.edits in one process: transactions, the gate, rollback, the journal, revert and cascade."""

from __future__ import annotations

import pytest
import torch

from engine.edits import EditJournal, EditRejected, RevertFailed, RevertRefused
from tests.conftest import make_tiny_qwen2


def snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters(remove_duplicate=False)}


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.equal(a.detach().contiguous().view(torch.uint8), b.detach().contiguous().view(torch.uint8))


def assert_state(model, state: dict[str, torch.Tensor]) -> None:
    for name, p in model.named_parameters(remove_duplicate=False):
        assert same_bits(p, state[name]), f"{name} differs"


def rank_one(weight: torch.Tensor, scale: float, generator: torch.Generator) -> None:
    """A ROME-shaped edit: W += u v^T, with ||u v^T|| = scale * ||W||."""
    u = torch.randn(weight.shape[0], generator=generator)
    v = torch.randn(weight.shape[1], generator=generator)
    delta = torch.outer(u, v)
    with torch.no_grad():
        weight.add_(delta * (scale * weight.norm() / delta.norm()))


def down_proj(model, layer: int) -> torch.Tensor:
    return model.model.layers[layer].mlp.down_proj.weight


@pytest.fixture
def model():
    return make_tiny_qwen2(tied=True, layers=4)


@pytest.fixture
def journal(model, tmp_path):
    with EditJournal(model, tmp_path / "run") as j:
        yield j


@pytest.mark.slow  # 199 commits; the writer thread fsyncs each pre-edit blob (list() waits for it)
def test_200_sequential_edits_gate_rejects_exactly_the_poisoned_one(model, journal):
    g = torch.Generator().manual_seed(1)
    poisoned = 117
    for i in range(200):
        layer = i % 4
        if i == poisoned:
            before = snapshot(model)
            with pytest.raises(EditRejected) as info:
                with journal.edit(f"edit {i}", layer=layer):
                    rank_one(down_proj(model, layer), 25.0, g)
            assert_state(model, before)
            assert "down_proj" in info.value.reasons[0] and "exceeds" in info.value.reasons[0]
        else:
            with journal.edit(f"edit {i}", layer=layer) as edit:
                rank_one(down_proj(model, layer), 0.02, g)
            assert edit.outcome == "committed"
    records = journal.list()
    assert [r.id for r in records] == sorted(r.id for r in records)
    assert [r.description for r in records if r.outcome != "committed"] == [f"edit {poisoned}"]
    assert sum(r.outcome == "committed" for r in records) == 199
    rejected = next(r for r in records if r.outcome == "rejected")
    assert rejected.tensors[0].hash_after is None and rejected.tensors[0].relative > 20


def test_exception_inside_the_block_restores_and_reraises(model, journal):
    before = snapshot(model)
    with pytest.raises(ZeroDivisionError):
        with journal.edit("half done"):
            with torch.no_grad():
                down_proj(model, 0).mul_(3)
                model.model.layers[1].self_attn.q_proj.weight.zero_()
            1 / 0
    assert_state(model, before)
    (record,) = journal.list()
    assert record.outcome == "failed" and "ZeroDivisionError" in record.reasons[0]
    assert record.names == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"}


def test_nonfinite_values_and_probe_reject(model, journal):
    before = snapshot(model)
    with pytest.raises(EditRejected, match="NaN or Inf"):
        with journal.edit("nan"):
            down_proj(model, 2).data[0, 0] = float("nan")
    with pytest.raises(EditRejected, match="probe returned False"):
        with journal.edit("probe says no", probe=lambda m: False):
            rank_one(down_proj(model, 1), 0.01, torch.Generator().manual_seed(0))
    with pytest.raises(EditRejected, match="0.2"):
        with journal.edit("probe scores low", probe=lambda m: 0.2, probe_min=0.9):
            rank_one(down_proj(model, 1), 0.01, torch.Generator().manual_seed(0))
    assert_state(model, before)
    ids = torch.tensor([[1, 2, 3]])
    with journal.edit("probe runs the model", probe=lambda m: bool(torch.isfinite(m(ids).logits).all())) as edit:
        rank_one(down_proj(model, 1), 0.01, torch.Generator().manual_seed(0))
    assert edit.outcome == "committed" and journal.show(edit.id).gate["probe"] is True


def test_tied_weights_are_one_tensor_and_buffers_are_ignored(model, journal):
    with journal.edit("embedding row") as edit:
        with torch.no_grad():
            model.lm_head.weight[5].mul_(1.01)
            model.model.embed_tokens.weight[6].mul_(1.01)
    assert edit.touched == ["model.embed_tokens.weight"]
    assert journal.show(edit.id).tensors[0].hash_before != journal.show(edit.id).tensors[0].hash_after


def test_revert_without_conflict_is_bit_exact(model, journal):
    original = snapshot(model)
    g = torch.Generator().manual_seed(2)
    with journal.edit("a", layer=0) as a:
        rank_one(down_proj(model, 0), 0.05, g)
    with journal.edit("b", layer=1) as b:
        rank_one(down_proj(model, 1), 0.05, g)
    after_b = snapshot(model)
    (revert_id,) = journal.revert(a.id)
    expected = dict(after_b, **{"model.layers.0.mlp.down_proj.weight": original["model.layers.0.mlp.down_proj.weight"]})
    assert_state(model, expected)
    entry = journal.show(revert_id)
    assert entry.kind == "revert" and entry.reverts == a.id and journal.show(a.id).reverted_by == revert_id
    assert entry.tensors[0].hash_after == journal.show(a.id).tensors[0].hash_before
    with pytest.raises(RevertRefused, match="was reverted"):
        journal.revert(a.id)
    journal.revert(b.id)
    assert_state(model, original)


def test_revert_with_conflict_is_refused_then_cascades_newest_first(model, journal):
    original = snapshot(model)
    g = torch.Generator().manual_seed(3)
    with journal.edit("a") as a:
        rank_one(down_proj(model, 0), 0.05, g)
    with journal.edit("b") as b:
        rank_one(down_proj(model, 0), 0.05, g)
        rank_one(down_proj(model, 1), 0.05, g)
    with journal.edit("c") as c:
        rank_one(down_proj(model, 1), 0.05, g)
    with journal.edit("d, unrelated") as d:
        rank_one(down_proj(model, 3), 0.05, g)
    after_d = snapshot(model)
    with pytest.raises(RevertRefused) as info:
        journal.revert(a.id)
    assert info.value.later == [b.id, c.id] and f"{b.id}, {c.id}" in str(info.value)
    assert_state(model, after_d)
    reverts = journal.revert(a.id, cascade=True)
    assert [journal.show(r).reverts for r in reverts] == [c.id, b.id, a.id]
    name_d = "model.layers.3.mlp.down_proj.weight"
    assert_state(model, dict(original, **{name_d: after_d[name_d]}))
    journal.revert(d.id)
    assert_state(model, original)


def test_revert_refuses_content_changed_outside_the_journal(model, journal):
    with journal.edit("a") as a:
        rank_one(down_proj(model, 0), 0.05, torch.Generator().manual_seed(4))
    with torch.no_grad():
        down_proj(model, 0).add_(1e-3)
    changed = snapshot(model)
    with pytest.raises(RevertFailed, match="changed outside the journal"):
        journal.revert(a.id)
    assert_state(model, changed)


def test_revert_of_rejected_edit_and_nesting_are_refused(model, journal):
    with pytest.raises(EditRejected):
        with journal.edit("too big"):
            rank_one(down_proj(model, 0), 5.0, torch.Generator().manual_seed(5))
    with pytest.raises(RevertRefused, match="outcome rejected"):
        journal.revert(1)
    with journal.edit("outer"):
        with pytest.raises(RuntimeError, match="do not nest"):
            with journal.edit("inner"):
                pass
    with pytest.raises(KeyError):
        journal.show(99)
