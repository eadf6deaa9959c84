"""Experiments that go wrong, under the real console driven by Pilot against a real engine.

Each experiment first damages the model, then raises, produces NaN, exhausts memory or hangs
in pure Python. The engine must survive each, put the model back to the last good state
(byte-exact: `lost` counts tensors that differ), and the console must answer keys throughout.
"Last good state" is the state before the run, out-of-memory included: the recovery checkpoints
saved between its retries hold the failure's state and are never rollback targets.
Memory exhaustion is a real MemoryError from an impossible allocation (bytearray(2**60))
and a torch.cuda.OutOfMemoryError raised directly (this machine has no GPU).
"""

from __future__ import annotations

import time

import pytest

from console.app import RedlineApp
from console.screens.help_screen import HelpScreen
from engine.checkpointing import CheckpointManager
from engine.commands import RunExperiment, Save
from engine.runtime.emergency import good_checkpoints
from engine.events import EngineState
from tests.console.test_console_engine import WIDE, make_engine
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)
from tests.reliability.helpers import changed, fingerprint

pytestmark = pytest.mark.slow
DEADLINE = 120.0  # seconds; a bound for a stuck engine, never a performance claim

DAMAGE = """
import torch

def damage(ctx):
    with torch.no_grad():
        ctx.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        ctx.model.model.embed_tokens.weight[5].add_(1.0)
"""
EXPERIMENTS = {
    "experiment raises": DAMAGE + """
def run(ctx):
    damage(ctx)
    ctx.step("damaged")
    raise ValueError("the experiment failed on purpose")
""",
    "experiment produces NaN": DAMAGE + """
def run(ctx):
    damage(ctx)
    with torch.no_grad():
        ctx.model.model.layers[1].self_attn.q_proj.weight[0, 0] = float("nan")
    ctx.step("nan")
    while True:
        ctx.step("after nan")
""",
    "experiment exhausts memory (real MemoryError)": DAMAGE + """
def run(ctx):
    damage(ctx)
    ctx.step("damaged")
    hog = bytearray(2 ** 60)
""",
    "experiment hits CUDA out of memory (raised directly)": DAMAGE + """
def run(ctx):
    damage(ctx)
    ctx.step("damaged")
    raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 80.00 GiB (raised by the test)")
""",
    "experiment hangs in pure Python (operator presses ctrl+x)": DAMAGE + """
def run(ctx):
    damage(ctx)
    ctx.step("damaged")
    n = 0
    while True:
        n += 1
""",
}


async def until(pilot, condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; last: {[e.text for e in list(pilot.app.state.stream)[-8:]]}")
        await pilot.pause(0.05)


async def console_answers(pilot, app) -> bool:
    """The help screen opens and closes on its key: the UI thread is not blocked."""
    await pilot.press("question_mark")
    opened = isinstance(app.screen, HelpScreen)
    await pilot.press("question_mark")
    return opened and not isinstance(app.screen, HelpScreen)


async def test_faulty_experiments_roll_back_and_the_console_keeps_answering(tmp_path, tiny_model_dir, ledger):  # noqa: F811
    engine = make_engine(tiny_model_dir, tmp_path / "run", experiment_options={"auto_restart": False})
    app = RedlineApp(engine)
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE and app.state.checkpoints, "the engine")
        good = fingerprint(engine.core.model)
        for i, (what, source) in enumerate(EXPERIMENTS.items()):
            path = write_experiment(tmp_path, source, name=f"faulty_{i}.py")
            engine.outcome = None
            engine.submit(RunExperiment(path=str(path)))
            await until(pilot, lambda: app.state.step is not None and app.state.step.name == "damaged"
                        or engine.outcome is not None, f"{what}: the first step")
            answered = await console_answers(pilot, app)  # while it runs (or hangs)
            if "hangs" in what:
                await pilot.press("ctrl+x")
            await until(pilot, lambda: engine.outcome is not None and engine.state is EngineState.IDLE
                        and engine.core.pending is None, f"{what}: the engine back to idle")
            answered &= await console_answers(pilot, app)
            survived = engine.is_alive() and engine.outcome in ("failed", "rolled_back", "stopped")
            target = good_checkpoints(engine.core.checkpoints)[0]["id"]  # what the engine rolled back to
            lost = engine.core.checkpoints.compare_with_model(target)["num_differences"]
            lost += changed(good, engine.core.model)
            good = fingerprint(engine.core.model)
            ledger.fault(what, detected=survived and answered, lost=lost)
        await pilot.press("q")
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
    assert app.return_code == 0


HOSTILE_PURPOSES = {
    "Rich markup": "[b]BOLD[/b] [red]RED",
    "ANSI escapes": "\x1b[2J\x1b[31mESC",
    "RTL override (shown as its code point)": "\u202eRTL-OVERRIDE",
}


async def test_hostile_checkpoint_metadata_is_shown_literally_and_stored_faithfully(tmp_path, tiny_model_dir, ledger):  # noqa: F811
    from tests.console.conftest import screen_text

    engine = make_engine(tiny_model_dir, tmp_path / "run")
    app = RedlineApp(engine)
    async with app.run_test(size=WIDE) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE and app.state.checkpoints, "the engine")
        for purpose in HOSTILE_PURPOSES.values():
            engine.submit(Save(purpose=purpose))
        await until(pilot, lambda: {c.purpose for c in app.state.checkpoints} >= set(HOSTILE_PURPOSES.values()),
                    "the saves")
        await pilot.pause(0.3)
        shown = screen_text(app)
        on_disk = CheckpointManager(engine.core.model, tmp_path / "run" / "checkpoints", memory_snapshot=False)
        stored = {c["id"]: c["metadata"].get("purpose") for c in on_disk.list_checkpoints()}
        expected_text = {"Rich markup": "[b]BOLD[/b] [red]RED", "ANSI escapes": "\u241b[2J\u241b[31mESC",
                         "RTL override (shown as its code point)": "<U+202E>RTL-OVERRIDE"}
        for what, purpose in HOSTILE_PURPOSES.items():
            saved = [cid for cid, p in stored.items() if p == purpose]
            lost = sum(not on_disk.verify_checkpoint(cid) for cid in saved) + (not saved)
            ledger.bad_input(f"checkpoint purpose with {what}: literal on screen, exact on disk",
                             detected=expected_text[what] in shown and bool(saved), lost=lost)
        await pilot.press("q")
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
