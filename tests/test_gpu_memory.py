"""Out-of-memory recovery frees the failed attempt's tensors, and a CPU fallback stays a CPU fallback.

No GPU here: the failures are a real MemoryError from the allocator and the real
torch.cuda.OutOfMemoryError type raised where a CUDA allocation would fail; the freeing is
proven with weak references to the tensors the failed attempts held in their frames.
"""

from __future__ import annotations

import json
import weakref

import pytest
import torch

from console.console_state import ConsoleState
from engine.codec import decode_event
from engine.commands import RunExperiment
from engine.device_memory import forget_exception, free_memory, is_out_of_memory
from engine.events import EngineState, EngineStateChanged, LogLine, RollbackMemory
from engine.rollback_memory import auto_budget, parse_rollback_memory, plan_rollback_memory
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
    assert "CUDA not in use" in free_memory(caught).describe()


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


@pytest.mark.slow  # three attempts, two recovery checkpoints and a reload: 2-5 s here
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
    assert sum("Collected garbage (CUDA not in use" in m for m in alerts) == 2
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


# -- the host snapshot's budget (--rollback-memory) ------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("16G", 16 << 30), ("512M", 512 << 20), ("1.5T", int(1.5 * (1 << 40))), ("16GiB", 16 << 30),
    ("16gb", 16 << 30), ("64k", 64 << 10), ("1048576", 1 << 20), (" auto ", "auto"), ("OFF", "off"), (None, "auto"),
])
def test_rollback_memory_sizes_parse(text, expected):
    assert parse_rollback_memory(text) == expected


@pytest.mark.parametrize("text", ["lots", "-5G", "16Q", "", "1e9", True])
def test_a_bad_rollback_memory_is_refused_naming_the_option(text):
    with pytest.raises(ValueError, match="--rollback-memory"):
        parse_rollback_memory(text)


def test_the_budget_decides_and_says_why():
    gib = 1 << 30
    # auto: available less room for the OS (10% of the total, at least 2 GiB) less the staging pool
    assert auto_budget(available=100 * gib, total=128 * gib, staging=4 * gib) == 100 * gib - int(12.8 * gib) - 4 * gib
    assert auto_budget(available=10 * gib, total=8 * gib) == 8 * gib
    assert auto_budget(available=gib, total=16 * gib) == 0
    fits = plan_rollback_memory("auto", 14 * gib, pinned=True, memory=(64 * gib, 128 * gib))
    assert fits.on and fits.describe().startswith("fast rollback: on, 14.0 GiB pinned")
    huge = plan_rollback_memory("64G", 140 * gib)
    assert not huge.on and huge.describe().startswith(
        "fast rollback: off: the model (140.0 GiB) exceeds the budget (64.0 GiB, --rollback-memory 64G)")
    assert "rollback reads the verified disk checkpoint" in huge.describe()
    off = plan_rollback_memory("off", 1)
    assert not off.on and off.budget is None and "(--rollback-memory off)" in off.describe()
    assert plan_rollback_memory(14 * gib, 14 * gib).on  # exactly the budget fits


DAMAGE_THEN_WAIT = """
    import torch

    def run(ctx):
        ctx.log(f"held: {ctx.checkpoints.memory_snapshot_id}")
        with torch.no_grad():
            ctx.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
            ctx.model.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
        ctx.step("damaged")
"""


def test_a_model_over_the_budget_is_rolled_back_bit_exactly_from_disk(engines, tiny_model_dir, tmp_path):  # noqa: F811
    experiment = write_experiment(tmp_path, DAMAGE_THEN_WAIT)
    driver = engines(tiny_model_dir, tmp_path / "run", rollback_memory="1K", experiment_options={"auto_restart": False})
    plan = driver.of(RollbackMemory)[-1]
    assert not plan.on and plan.budget_bytes == 1024 and plan.model_bytes > 1024
    assert plan.message.startswith("fast rollback: off: the model (") and "exceeds the budget (1.0 KiB" in plan.message
    checkpoints = driver.core.checkpoints
    assert checkpoints.memory_snapshot_id is None and checkpoints.memory_snapshot_bytes == 0
    before = {name: t.detach().clone() for name, t in driver.core.model.state_dict().items()}
    driver.engine.submit(RunExperiment(path=str(experiment)))
    assert driver.wait_outcome() == "rolled_back", driver.alert_messages()
    assert "held: None" in [e.text for e in driver.of(LogLine)]
    after = driver.core.model.state_dict()
    assert all(torch.equal(before[name].view(torch.uint8), after[name].detach().view(torch.uint8)) for name in before)
    assert checkpoints.memory_snapshot_id is None  # still nothing held after the disk restore
    assert_console_shows(plan)


def assert_console_shows(plan: RollbackMemory) -> None:
    """Headless prints it as a JSON line; a console (replayed or attached) decodes it into its alert stream."""
    decoded = decode_event(json.loads(plan.to_json()))
    assert decoded == plan
    state = ConsoleState()
    batch = state.apply_all([decoded])
    assert state.rollback_memory == plan and "header" in batch.changed
    assert [(e.source, e.text) for e in state.stream] == [("memory", plan.message)]


def test_a_bad_rollback_memory_stops_the_engine_with_the_option_named(engines, tiny_model_dir, tmp_path):  # noqa: F811
    driver = engines(tiny_model_dir, tmp_path / "run", rollback_memory="lots")
    assert driver.engine.state == EngineState.ERROR
    assert "--rollback-memory" in (driver.engine.error or "")


def test_both_command_lines_take_the_option_and_refuse_a_bad_one(capsys):
    from console.cli import console_parser
    from engine.runtime.headless import build_parser, config_from_args

    assert config_from_args(build_parser().parse_args(["--rollback-memory", "512M"])).rollback_memory == 512 << 20
    assert config_from_args(build_parser().parse_args([])).rollback_memory == "auto"
    assert console_parser().parse_args(["--rollback-memory", "off"]).rollback_memory == "off"
    with pytest.raises(SystemExit) as exit_info:
        console_parser().parse_args(["--rollback-memory", "plenty"])
    assert exit_info.value.code == 2
    assert "argument --rollback-memory: 'plenty' is not a size" in capsys.readouterr().err
