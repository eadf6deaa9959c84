"""The fused scan agrees exactly with the guide's naive per-parameter loop."""

from __future__ import annotations

import math

import pytest
import torch

from engine.health_scan import scan_model, scan_tensors, unique_named_tensors
from engine.safety_monitor import SafetyMonitor
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2
from tests.host_transfers import HostTransfers


def naive(model):
    """The guide's loop: three passes and three host syncs per parameter."""
    rows = {}
    for name, p in model.named_parameters():
        finite = p[torch.isfinite(p)]
        rows[name] = (
            torch.isnan(p).sum().item(),
            torch.isinf(p).sum().item(),
            finite.abs().max().item() if finite.numel() else 0.0,
        )
    return rows


def corrupt(model, seed):
    g = torch.Generator().manual_seed(seed)
    params = [p for _, p in model.named_parameters()]
    with torch.no_grad():
        for p in (params[i] for i in torch.randperm(len(params), generator=g)[:5].tolist()):
            flat = p.view(-1)
            idx = torch.randint(0, flat.numel(), (4,), generator=g)
            flat[idx[:2]] = float("nan")
            flat[idx[2]] = float("inf")
            flat[idx[3]] = -float("inf")


@pytest.mark.parametrize("make", [make_tiny_qwen2, make_tiny_llama, make_tiny_gpt2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_scan_matches_naive_loop(make, dtype):
    model = make().to(dtype)
    corrupt(model, seed=len(make.__name__))
    expected = naive(model)
    scan = scan_model(model)
    by_name = {n: s for s in scan.weights for n in s.names}
    assert set(by_name) == {n for n, _ in model.named_parameters(remove_duplicate=False)}
    for name, (nan, inf, _) in expected.items():
        assert (by_name[name].nan_count, by_name[name].inf_count) == (nan, inf), name
    for name, (nan, inf, finite_max) in expected.items():
        s = by_name[name]
        assert s.finite_max_abs == finite_max, name
        if nan == 0 and inf == 0:
            assert s.max_abs == finite_max, name
        elif nan:
            assert math.isnan(s.max_abs)
    assert scan.nan_count == sum(v[0] for v in expected.values())
    assert scan.inf_count == sum(v[1] for v in expected.values())
    assert scan.max_abs_weight == max(v[2] for v in expected.values())


def test_the_counter_sees_each_kind_of_read():
    t = torch.tensor([1.5, 2.0])
    with HostTransfers() as reads:
        t.tolist(), t[0].item(), bool(t[0]), float(t[1]), int(t[1]), t.cpu(), t.numpy()
        t.to("cpu"), t.to(device=torch.device("cpu")), t.to(torch.float64), t + 1
    assert reads.calls == ["tolist", "item", "__bool__", "__float__", "__int__", "cpu", "numpy", "to(cpu)", "to(cpu)"]


def test_one_host_read_when_clean_and_one_more_only_when_not(tiny_qwen2):
    with HostTransfers() as reads:
        scan_model(tiny_qwen2)
    assert reads.calls == ["tolist"]
    with torch.no_grad():
        tiny_qwen2.model.norm.weight[0] = float("nan")
    with HostTransfers() as reads:
        scan_model(tiny_qwen2)
    assert reads.calls == ["tolist", "tolist"]


def test_several_damaged_tensors_still_cost_one_more_read(tmp_path, tiny_llama):
    """NaN in three tensors, |w| over the limit in two others: two reads, not one per damaged tensor."""
    params = dict(tiny_llama.named_parameters())
    nan_in = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight", "model.norm.weight"]
    too_big = ["model.layers.0.self_attn.v_proj.weight", "lm_head.weight"]
    with torch.no_grad():
        for name in nan_in:
            params[name].view(-1)[3] = float("nan")
        for name in too_big:
            params[name].view(-1)[5] = 250.0
    with HostTransfers() as reads:
        scan = scan_model(tiny_llama)
    assert reads.calls == ["tolist", "tolist"]
    assert sorted(s.name for s in scan.weights if s.nan_count) == sorted(nan_in)
    assert sorted(s.name for s in scan.weights if s.finite_max_abs == 250.0) == sorted(too_big)

    monitor = SafetyMonitor(tmp_path)
    monitor.set_threshold("max_weight_value", 100.0)
    with HostTransfers() as reads:
        health = monitor.check_model_health(tiny_llama)
    assert reads.calls == ["tolist", "tolist"]
    assert health["nan_count"] == 3
    assert {i["layer"] for i in health["issues"] if i["check"] == "max_weight_value"} == set(too_big)


def test_tied_and_identical_views_are_scanned_once(tiny_qwen2):
    unique = unique_named_tensors(tiny_qwen2.named_parameters(remove_duplicate=False))
    names = [(n, a) for n, a, _ in unique if a]
    assert names == [("model.embed_tokens.weight", ("lm_head.weight",))]
    base = torch.randn(8, 4)
    pairs = [("a", base), ("b", base.view(8, 4)), ("c", base[2:]), ("meta", torch.empty(3, device="meta"))]
    unique = unique_named_tensors(pairs)
    assert [(n, a) for n, a, _ in unique] == [("a", ("b",)), ("c", ())]


def test_norms_and_gradients(tiny_llama):
    ids = torch.tensor([[3, 1, 4, 1, 5, 9, 2, 6]])
    tiny_llama(ids, labels=ids).loss.backward()
    scan = scan_model(tiny_llama, norms=True)
    for s in scan.weights:
        p = dict(tiny_llama.named_parameters())[s.name]
        assert s.norm == pytest.approx(torch.linalg.vector_norm(p.detach()).item(), rel=1e-5)
    grads = [p.grad for p in tiny_llama.parameters() if p.grad is not None]
    assert len(scan.grads) == len(grads)
    assert scan.grad_norm == pytest.approx(torch.nn.utils.get_total_norm(grads).item(), rel=1e-5)


def test_empty_integer_and_extra_tensors():
    with HostTransfers() as reads:
        scan = scan_tensors(
            [("empty", torch.empty(0)), ("ints", torch.arange(5)), ("w", torch.tensor([-3.0, 2.0]))],
            extra=[torch.tensor([[1.0, 2.0], [3.0, 4.0]])],
        )
    assert reads.calls == ["tolist"]  # the extras ride along in the weights' read
    assert [s.max_abs for s in scan.weights] == [0.0, 0.0, 3.0]
    assert scan.extras == [[1.0, 2.0, 3.0, 4.0]]
    assert scan.grad_norm is None
