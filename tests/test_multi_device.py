"""A model whose tensors are not all alike: `--device auto`, the scan's groups, per-tensor checkpoints, GPU gauges.

This machine has one torch device (the CPU), so a model "split by hand" here is split by dtype: the
scan groups by (device, dtype) and reads back once per device, and checkpoints copy each tensor
from and to its own place, so an fp32 + bf16 model exercises the same grouping and per-tensor
paths a model spread over cuda:0 and cuda:1 takes. What only a GPU proves (several real devices,
NVML, the sync count under `torch.cuda.set_sync_debug_mode`) is bench/gpu_check.py's job.
"""

from __future__ import annotations

import json
import logging

import pytest
import torch

from engine import placement
from engine.checkpointing import CheckpointManager
from engine.codec import decode_event
from engine.events import HealthSnapshot
from engine.gauges import gpu_gauges, health_gauges
from engine.gpu_readings import cuda_indices, gpu_readings
from engine.health_scan import scan_model
from engine.model_manager import ModelManager
from engine.safety_monitor import SafetyMonitor
from tests.conftest import make_tiny_llama
from tests.engine_harness import tiny_model_dir  # noqa: F401  (fixture)
from tests.host_transfers import HostTransfers


def split_by_hand():
    """A tiny Llama whose second layer and head are bf16, the rest fp32."""
    model = make_tiny_llama()
    model.model.layers[1].to(torch.bfloat16)
    model.lm_head.to(torch.bfloat16)
    return model


def test_auto_without_cuda_loads_on_the_cpu_and_says_so(tiny_model_dir, caplog):  # noqa: F811
    with caplog.at_level(logging.INFO, logger="engine.placement"):
        manager = ModelManager(str(tiny_model_dir), device="auto")
    assert not manager.spread and manager.device == torch.device("cpu")
    assert any("sees no CUDA GPU" in r.getMessage() and "CPU" in r.getMessage() for r in caplog.records)
    model = manager.load()
    assert placement.model_devices(model) == [torch.device("cpu")]
    assert placement.where(model, torch.device("cuda", 3)) == "cpu"  # where the weights are, not where asked
    assert placement.where(None, manager.device) == "cpu" and placement.where(None, None) == ""
    spread = [torch.device("cuda", 1), torch.device("cuda:0"), torch.device("cuda", 1), torch.device("cuda", 10)]
    assert placement.devices_label(spread) == "cuda:0+cuda:1+cuda:10"  # each once, in index order
    assert placement.input_device(model) == model.get_input_embeddings().weight.device
    assert placement.load_kwargs(torch.device("cpu"), spread=False) == {}
    assert placement.load_kwargs(torch.device("cuda", 1), spread=False) == {"device_map": {"": "cuda:1"}}
    assert placement.load_kwargs(torch.device("cuda", 0), spread=True) == {"device_map": "auto"}


def test_offloaded_weights_are_found_and_an_offloaded_model_gathers_on_the_cpu():
    from accelerate import cpu_offload

    model = make_tiny_llama()
    original = {k: v.clone() for k, v in model.state_dict().items()}
    assert placement.offloaded(model) == []
    cpu_offload(model.model.layers[1], execution_device=torch.device("cpu"))  # real accelerate offload: meta weights
    assert "model.layers.1.mlp.up_proj.weight" in placement.offloaded(model)
    assert hasattr(model.model.layers[1], "_hf_hook")

    placement.move_to_cpu(model)
    assert not any(hasattr(m, "_hf_hook") for m in model.modules()) and placement.offloaded(model) == []
    model.hf_device_map = {"": 0}
    placement.move_to_cpu(model)
    assert not hasattr(model, "hf_device_map")
    model.hf_device_map = {"model.embed_tokens": 0, "model.layers": 1, "model.norm": 1, "lm_head": "cpu"}
    assert placement.offloaded(model) == ["lm_head"]  # a device map as accelerate writes it: cpu beside GPUs
    model.hf_device_map = {"": "cpu"}
    assert placement.offloaded(model) == []  # a CPU model is placed, not offloaded
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert model(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 300)


def test_scan_groups_by_dtype_and_reads_back_once_per_device():
    model = split_by_hand()
    dtypes = {p.dtype for p in model.parameters()}
    assert dtypes == {torch.float32, torch.bfloat16}
    with HostTransfers() as reads:
        scan = scan_model(model, norms=True)
    assert reads.calls == ["tolist"]  # two (device, dtype) groups, one device: one read
    by_name = {s.name: s for s in scan.weights}
    assert by_name["lm_head.weight"].dtype == "bfloat16" and by_name["model.norm.weight"].dtype == "float32"
    for name, p in model.named_parameters():
        assert by_name[name].maximum == pytest.approx(float(p.detach().float().max()), rel=1e-6)

    params = dict(model.named_parameters())
    damaged = ["model.layers.0.mlp.up_proj.weight", "model.layers.1.self_attn.q_proj.weight"]  # fp32, bf16
    with torch.no_grad():
        for name in damaged:
            params[name].view(-1)[:2] = float("nan")
        params["lm_head.weight"].view(-1)[0] = float("inf")
    with HostTransfers() as reads:
        scan = scan_model(model)
    assert reads.calls == ["tolist", "tolist"]  # suspects of both groups: one more read for the device
    counts = {s.name: (s.nan_count, s.inf_count) for s in scan.weights if not s.finite}
    assert counts == {damaged[0]: (2, 0), damaged[1]: (2, 0), "lm_head.weight": (0, 1)}


def test_checkpoints_copy_each_tensor_in_its_own_dtype_and_place(tmp_path):
    model = split_by_hand()
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    where = {k: (v.device, v.dtype, v.data_ptr()) for k, v in model.state_dict().items()}
    manager = CheckpointManager(model, tmp_path / "ckpt")
    first = manager.save_checkpoint()

    def trash():
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(3).add_(1)

    trash()
    assert manager.restore_checkpoint(first), manager.last_error  # from host memory
    trash()
    cold = CheckpointManager(model, tmp_path / "ckpt", memory_snapshot=False)
    assert cold.restore_checkpoint(first), cold.last_error  # from disk, verified
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key].view(torch.uint8), value.view(torch.uint8)), key
        assert (after[key].device, after[key].dtype, after[key].data_ptr()) == where[key], key


def test_gpu_gauges_one_per_gpu_and_none_on_the_cpu(tmp_path):
    readings = [{"index": 0, "used": 30 << 30, "total": 80 << 30, "utilization": 97.0},
                {"index": 1, "used": 76 << 30, "total": 80 << 30, "utilization": None}]
    gauges = gpu_gauges(readings)
    assert [g.name for g in gauges] == ["gpu0_mem", "gpu0_util", "gpu1_mem"]
    assert [g.label for g in gauges] == ["gpu0 mem", "gpu0 util", "gpu1 mem"]
    assert gauges[1].text == "97%" and gauges[0].severity == "INFO" and gauges[2].severity != "INFO"
    sent = HealthSnapshot(status="OK", gauges=gauges)
    assert decode_event(json.loads(sent.to_json())).gauges == gauges  # they reach an attached console as sent

    assert gpu_readings([torch.device("cpu")]) == []
    assert cuda_indices([torch.device("cuda", 1), torch.device("cpu"), torch.device("cuda", 0)]) == [0, 1]
    health = SafetyMonitor(tmp_path).check_model_health(make_tiny_llama())
    assert health["gpus"] == [] and health["device_memory_used"] is None
    names = [g.name for g in health_gauges(health, perplexity=None, baseline_perplexity=None)]
    assert not any(n.startswith("gpu") for n in names) and "device_mem" in names
