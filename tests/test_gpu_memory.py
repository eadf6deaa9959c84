"""Out-of-memory recovery frees the failed attempt's tensors, and a CPU fallback stays a CPU fallback.

No GPU here: the failures are a real MemoryError from the allocator and the real
torch.cuda.OutOfMemoryError type raised where a CUDA allocation would fail; the freeing is
proven with weak references to the tensors the failed attempts held in their frames.
"""

from __future__ import annotations

import weakref

import pytest
import torch

from engine.device_memory import forget_exception, free_memory, is_out_of_memory
from engine.events import EngineStateChanged, LogLine
from tests.engine_harness import engines, tiny_model_dir, write_experiment  # noqa: F401


def _fails_holding(probe: list):
    held = torch.ones(1 << 18)
    probe.append(weakref.ref(held))
    try:
        raise ValueError("first failure, while handling which memory ran out")
    except ValueError:
        bytearray(1 << 62)  # a real MemoryError from the allocator


def test_forget_exception_frees_the_frames_of_the_whole_chain():
    probe: list = []
    try:
        _fails_holding(probe)
    except MemoryError as exc:
        assert is_out_of_memory(exc) and exc.__context__ is not None
        context = exc.__context__
        caught = forget_exception(exc)
    assert probe[0]() is None, "the failed call's tensor outlived forget_exception"
    assert caught.kind == "MemoryError" and str(caught).startswith("MemoryError")
    assert exc_is_bare(context)
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory")) and not is_out_of_memory(ValueError())
    assert free_memory(caught).freed is None  # no CUDA here: nothing measured, and said so
    assert "no CUDA" in free_memory(caught).describe()


def exc_is_bare(exc: BaseException) -> bool:
    return exc.__traceback__ is None and exc.__context__ is None and exc.__cause__ is None


# Attempt 1 fails with a real MemoryError, attempt 2 with the CUDA type deeper down, while each
# holds a tensor in a frame local; each retry reports whether the previous attempt's tensor is gone.
# The engine plays a CUDA engine (its device says cuda), so attempt 2 takes the CPU fallback;
# attempt 3 reloads the weights from disk and reports the devices.
OOM_TWICE = """
    import weakref
    import torch

    def deeper(ctx, probes):
        activations = torch.ones(1 << 20)
        probes.append(weakref.ref(activations))
        ctx.step("allocated")
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (raised by the test)")

    def run(ctx):
        core = ctx._host._core
        probes = ctx.options.setdefault("probes", [])
        if probes:
            ctx.log(f"previous attempt freed: {probes[-1]() is None}")
        if len(probes) == 0:
            core.device = core.manager.device = torch.device("cuda")
            batch = torch.ones(1 << 20)
            probes.append(weakref.ref(batch))
            ctx.step("allocated")
            hog = bytearray(1 << 62)
        elif len(probes) == 1:
            deeper(ctx, probes)
        else:
            assert core.recovery.reload_model(), core.recovery.model_error
            where = next(core.model.parameters()).device
            ctx.log(f"devices after reload: engine {core.device}, manager {core.manager.device}, model {where}")
"""


def test_out_of_memory_frees_each_failed_attempt_and_the_cpu_fallback_sticks(engines, tiny_model_dir, tmp_path):  # noqa: F811
    experiment = write_experiment(tmp_path, OOM_TWICE)
    driver = engines(tiny_model_dir, tmp_path / "run", experiment=experiment, experiment_options={"batch_size": 8})
    assert driver.wait_outcome() == "finished", driver.alert_messages()
    logs = [e.text for e in driver.of(LogLine)]
    assert logs.count("previous attempt freed: True") == 2, logs
    assert "devices after reload: engine cpu, manager cpu, model cpu" in logs
    alerts = driver.alert_messages()
    assert any("MemoryError" in m and "attempt 1 of 3" in m for m in alerts)
    assert any("OutOfMemoryError: CUDA out of memory. Tried to allocate 80.00 GiB" in m for m in alerts)
    assert sum("Collected garbage (no CUDA device" in m for m in alerts) == 2
    assert any("moved the model to the CPU" in m for m in alerts)
    fallback = next(i for i, m in enumerate(driver.events) if "moved the model to the CPU" in getattr(m, "message", ""))
    assert {e.device for e in driver.events[fallback:] if isinstance(e, EngineStateChanged)} == {"cpu"}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_free_memory_measures_what_a_dropped_cuda_tensor_gave_back():
    probe: list = []

    def fail():
        held = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
        probe.append(weakref.ref(held))
        raise torch.cuda.OutOfMemoryError("raised by the test")

    try:
        fail()
    except torch.cuda.OutOfMemoryError as exc:
        caught = forget_exception(exc)
    freed = free_memory(caught)
    assert probe[0]() is None and freed.freed >= 256 << 20 and freed.returned >= 256 << 20
