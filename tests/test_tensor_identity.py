"""engine.store.identity: the same view vs shared memory, and the index the auto-checkpointer asks."""

from __future__ import annotations

import torch

from engine.store.dtype_names import ITEMSIZE
from engine.store.identity import NAME_TO_DTYPE, SpanIndex, overlap_groups, tie_groups


def test_same_view_is_one_tensor_a_view_at_an_offset_only_shares_memory():
    base = torch.randn(8, 4)
    named = [("a", base), ("b", base.view(8, 4)), ("tail", base[4:]), ("other", torch.randn(3)),
             ("meta", torch.empty(3, device="meta")), ("empty", torch.empty(0))]
    assert [names for names, _t in tie_groups(named)] == [["a", "b"], ["tail"], ["other"], ["empty"]]
    assert [[n for n, _t, _s in g] for g in overlap_groups(named)] == [["a", "b", "tail"]]


def test_one_empty_tensor_under_two_names_is_one_two_empty_tensors_are_two():
    e, f = torch.empty(0), torch.empty(0)
    assert [names for names, _t in tie_groups([("e", e), ("e2", e), ("f", f)])] == [["e", "e2"], ["f"]]


def test_span_index_sees_any_overlap_and_nothing_else():
    base = torch.zeros(16)
    index = SpanIndex([base[2:6], base[10:12]])
    assert index.touches(base[5:8]) and index.touches(base) and index.touches(base[11])
    assert not index.touches(base[6:10]) and not index.touches(base[12:])
    assert not index.touches(torch.zeros(4)) and not index.touches(torch.empty(0))
    assert not index.touches(base[::4][2:2])


def test_dtype_table_agrees_with_torch():
    for name, dtype in NAME_TO_DTYPE.items():
        assert torch.empty(0, dtype=dtype).element_size() == ITEMSIZE[name]
