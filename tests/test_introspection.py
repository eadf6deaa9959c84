"""WeightInspector: tied-weight groups against accelerate's reference, views at offsets, meta tensors."""

from __future__ import annotations

import pytest
import torch
from accelerate.utils import find_tied_parameters
from torch import nn

from engine.introspection import WeightInspector
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2


def as_sets(groups):
    return {frozenset(g) for g in groups}


@pytest.mark.parametrize(
    "make, expected",
    [
        (lambda: make_tiny_qwen2(tied=True), [["model.embed_tokens.weight", "lm_head.weight"]]),
        (lambda: make_tiny_qwen2(tied=False), []),
        (make_tiny_llama, []),
        (make_tiny_gpt2, [["transformer.wte.weight", "lm_head.weight"]]),
    ],
    ids=["qwen2-tied", "qwen2-untied", "llama", "gpt2"],
)
def test_groups_equal_accelerate(make, expected):
    model = make()
    ours = WeightInspector(model).get_shared_weights()
    assert ours == expected  # model order, deterministic
    assert as_sets(ours) == as_sets(find_tied_parameters(model))


class ViewAlias(nn.Module):
    """Two parameters over one storage: `tail` is a view at an offset into `full`."""

    def __init__(self):
        super().__init__()
        self.full = nn.Parameter(torch.randn(8, 4))
        self.tail = nn.Parameter(self.full.data[4:])
        self.separate = nn.Parameter(torch.randn(8, 4))
        self.also_full = self.full  # an identity tie as well


def test_view_at_an_offset_is_coupled():
    model = ViewAlias()
    inspector = WeightInspector(model, "view-alias")
    assert inspector.get_shared_weights() == [["full", "tail", "also_full"]]  # registration order
    # accelerate only sees the identity tie; we also see the view into the same bytes.
    assert as_sets(find_tied_parameters(model)) == {frozenset({"full", "also_full"})}
    assert set(inspector.get_shared_layers("tail")) == {"full", "also_full"}
    assert inspector.get_shared_layers("separate") == []
    with torch.no_grad():
        model.tail[0, 0] = 123.0
    assert model.full[4, 0].item() == 123.0  # really coupled


def test_disjoint_views_of_one_storage_are_not_grouped():
    model = nn.Module()
    base = torch.randn(8, 4)
    model.top = nn.Parameter(base[:4])
    model.bottom = nn.Parameter(base[4:])
    assert WeightInspector(model).get_shared_weights() == []


def test_meta_tensors_are_excluded():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 4))
    assert all(p.data_ptr() == 0 for p in model.parameters())  # why data_ptr equality alone is wrong
    assert WeightInspector(model).get_shared_weights() == []


def test_a_broken_tie_is_seen_on_the_next_call(tiny_qwen2):
    inspector = WeightInspector(tiny_qwen2, "tiny")
    assert inspector.get_shared_layers("model.embed_tokens.weight") == ["lm_head.weight"]
    tiny_qwen2.lm_head.weight = nn.Parameter(tiny_qwen2.lm_head.weight.detach().clone())
    assert inspector.get_shared_weights() == []


def test_shared_layers_by_module_name_and_unknown_name(tiny_qwen2):
    inspector = WeightInspector(tiny_qwen2)
    assert inspector.get_shared_layers("lm_head.weight") == ["model.embed_tokens.weight"]
    assert inspector.get_shared_layers("model.embed_tokens") == ["lm_head.weight"]
    assert inspector.get_shared_layers("model.layers.0") == []
    with pytest.raises(ValueError, match="did you mean model.embed_tokens.weight"):
        inspector.get_shared_layers("model.embed_token.weight")


def test_coupling_report(tiny_qwen2):
    (group,) = WeightInspector(tiny_qwen2).coupling_report()
    w = tiny_qwen2.lm_head.weight
    assert group["names"] == ["model.embed_tokens.weight", "lm_head.weight"]
    assert group["data_ptr"] == hex(w.data_ptr())
    assert group["nbytes"] == w.numel() * w.element_size()
    assert group["dtype"] == "float32" and group["device"] == "cpu"
    assert group["storage"].startswith(hex(w.data_ptr())) and "KiB float32" in group["storage"]


def test_parameter_stats(tiny_gpt2):
    with torch.no_grad():
        tiny_gpt2.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    rows = WeightInspector(tiny_gpt2).parameter_stats()
    params = dict(tiny_gpt2.named_parameters(remove_duplicate=False))
    assert [r["name"] for r in rows] == list(params)
    for r in rows:
        p = params[r["name"]].detach()
        assert r["shape"] == list(p.shape) and r["numel"] == p.numel() and r["dtype"] == "float32"
        if r["nan_count"] == 0:
            assert r["max_abs"] == p.abs().max().item()
            assert r["norm"] == pytest.approx(torch.linalg.vector_norm(p).item(), rel=1e-5)
    bad = [r for r in rows if r["nan_count"]]
    assert [r["name"] for r in bad] == ["transformer.h.0.mlp.c_fc.weight"]
    by_name = {r["name"]: r for r in rows}
    assert by_name["lm_head.weight"]["norm"] == by_name["transformer.wte.weight"]["norm"]
