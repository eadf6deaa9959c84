"""The console driven with Pilot against a real engine on a tiny model.

The console never touches torch; these tests may, to check what the engine did.
"""

from __future__ import annotations

import time

import pytest
import torch

from console.app import EngineAnswered, RedlineApp
from console.screens.confirm import ConfirmScreen
from console.widgets.change_bars import ChangeBars
from console.widgets.checkpoint_table import CheckpointTable
from engine.commands import RunExperiment
from engine.events import EngineState
from engine.runtime import Engine, EngineConfig
from tests.console.conftest import notices
from tests.engine_harness import KEEP_CHANGING, tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
DEADLINE = 90.0  # seconds; only a bound for a stuck engine, never a performance claim
WIDE = (160, 48)

TRIPLE = """
    import torch

    def run(ctx):
        with torch.no_grad():
            ctx.model.model.layers[0].mlp.down_proj.weight.mul_(3.0)
        ctx.step("tripled")
"""



def make_engine(model_dir, run_dir, experiment=None, **overrides) -> Engine:
    settings = dict(health_interval=0.2, stop_grace=1.0, evaluate_every=0, auto_checkpoint_every=0)
    settings.update(overrides)
    return Engine(EngineConfig(model=str(model_dir), experiment=str(experiment) if experiment else None,
                               run_dir=run_dir, device="cpu", **settings))


async def until(pilot, condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}; alerts: "
                                 f"{[e.text for e in list(pilot.app.state.stream)[-8:]]}")
        await pilot.pause(0.05)


def row_of(app: RedlineApp, purpose: str) -> int:
    table = app.main.query_one(CheckpointTable)
    return next(i for i in range(table.row_count) if str(table.get_row_at(i)[-1]) == purpose)


async def test_save_then_restore_returns_the_model_to_the_saved_state(tmp_path, tiny_model_dir):
    answers = []
    engine = make_engine(tiny_model_dir, tmp_path / "run")
    app = RedlineApp(engine)
    hook = lambda m: answers.append(m.done) if isinstance(m, EngineAnswered) else None  # noqa: E731
    async with app.run_test(size=WIDE, message_hook=hook) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE and app.state.checkpoints, "the engine")
        await until(pilot, lambda: app.main.gauges.rows, "the health gauges")
        labels = [str(row.label.render()) for row in app.main.gauges.rows]
        assert {"status", "NaN/Inf", "max|w|", "perplexity"} <= set(labels)
        weight = engine.core.model.model.layers[0].mlp.down_proj.weight
        saved_weight = weight.detach().clone()

        prompt = app.main.save_prompt
        await pilot.press("s")  # the prompt takes the footer's line; Esc closes it without saving
        assert prompt.is_open and not app.main.footer.display
        await pilot.press("escape")
        assert not prompt.is_open and app.main.footer.display
        await pilot.press("s")
        assert prompt.is_open
        await pilot.press(*"before tripling", "enter")
        await until(pilot, lambda: any(d.command == "save" for d in answers), "the save")
        echo = str(prompt.query_one("#save-label").render())  # the answer, in the same line
        assert echo.startswith(" saved checkpoint_") and echo.endswith("· before tripling") and not prompt.is_open
        assert [d.command for d in answers].count("save") == 1  # Esc saved nothing
        table = app.main.query_one(CheckpointTable)
        await until(pilot, lambda: table.row_count == 2, "the table (drawn after the answer's frame)")
        assert table.row_count == 2 and str(table.get_row_at(0)[-1]) == "before tripling"

        engine.submit(RunExperiment(path=str(write_experiment(tmp_path, TRIPLE))))
        await until(pilot, lambda: engine.outcome == "finished" and app.state.engine_state is EngineState.IDLE,
                    "the experiment")
        assert torch.equal(weight, saved_weight * 3)

        table.focus()
        table.move_cursor(row=row_of(app, "before tripling"))
        await pilot.press("R")
        assert isinstance(app.screen, ConfirmScreen)
        bars = app.screen.query_one(ChangeBars)
        await until(pilot, lambda: bars.comparison is not None, "the comparison")
        assert "model.layers.0.mlp.down_proj.weight" in [d.layer for d in bars.comparison.differences]
        await pilot.press("enter")  # the focused button is Cancel: the default is No
        assert not isinstance(app.screen, ConfirmScreen)
        await pilot.pause(0.3)
        assert not any(d.command == "restore" for d in answers) and torch.equal(weight, saved_weight * 3)

        await pilot.press("R", "y")
        await until(pilot, lambda: any(d.command == "restore" for d in answers), "the restore")
        assert [d.ok for d in answers if d.command == "restore"] == [True]
        assert torch.equal(weight, saved_weight)
        assert any("restored" in e.text for e in app.state.stream)

        # another process writing into the same run directory shows up live
        from engine.checkpointing import CheckpointManager
        from tests.conftest import make_tiny_qwen2

        other = CheckpointManager(make_tiny_qwen2(), tmp_path / "run" / "checkpoints", memory_snapshot=False)
        other.save_checkpoint({"purpose": "written elsewhere", "state": "external"})
        await until(pilot, lambda: any(c.purpose == "written elsewhere" for c in app.state.checkpoints),
                    "the external checkpoint")
        assert row_of(app, "written elsewhere") == 0

        await pilot.press("q")  # idle: no question, the engine is shut down safely
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
    assert app.return_code == 0


async def test_emergency_stop_halts_and_rolls_back_and_quit_asks_first(tmp_path, tiny_model_dir):
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    engine = make_engine(tiny_model_dir, tmp_path / "run", experiment=experiment)
    app = RedlineApp(engine)
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await until(pilot, lambda: app.state.step is not None and app.state.step.step >= 3, "experiment steps")
        weight = engine.core.model.model.layers[1].mlp.up_proj.weight
        baseline = app.state.baseline()
        assert baseline is not None

        await pilot.press("p")
        await until(pilot, lambda: app.state.engine_state is EngineState.PAUSED, "the pause")
        await pilot.press("p")
        await until(pilot, lambda: app.state.engine_state is EngineState.RUNNING, "the resume")

        await pilot.press("q")  # an experiment runs: ask first, default No
        assert isinstance(app.screen, ConfirmScreen)
        await pilot.press("n")
        assert engine.is_alive() and not isinstance(app.screen, ConfirmScreen)

        await pilot.press("ctrl+x")
        await until(pilot, lambda: engine.outcome is not None and app.state.engine_state is EngineState.IDLE,
                    "the emergency stop")
        assert engine.outcome == "stopped"
        # the notice follows the frame that draws the engine's answer: on a loaded machine, after the rollback
        await until(pilot, lambda: any("EMERGENCY STOP" in n for n in notices(app)), "the emergency-stop notice")
        assert any("Emergency stop complete" in e.text for e in app.state.stream)
        await until(pilot, lambda: any(c.state == "forensic" for c in app.state.checkpoints), "the forensic checkpoint")
        steps_after_stop = app.state.step.step
        await pilot.pause(0.5)
        assert app.state.step.step == steps_after_stop  # halted: no more steps
        # rolled back to the last healthy checkpoint: the baseline (no other was saved), i.e. the model on disk
        from transformers import AutoModelForCausalLM

        fresh = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        assert torch.equal(weight, fresh.model.layers[1].mlp.up_proj.weight)

        await pilot.press("q")  # idle again: quits without a question
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
    assert app.return_code == 0


async def test_readonly_engine_hides_and_refuses(tmp_path, tiny_model_dir):
    engine = make_engine(tiny_model_dir, tmp_path / "run", readonly=True)
    app = RedlineApp(engine)
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE, "the engine")
        shown = {b.binding.action for b in app.screen.active_bindings.values()}
        assert {"save", "restore", "emergency_stop", "pause"}.isdisjoint(shown)
        await pilot.press("s", "ctrl+x")
        assert not app.main.save_prompt.is_open
        assert sum("read-only" in n for n in notices(app)) == 2
        assert engine.state is EngineState.IDLE
        await pilot.press("q")
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
