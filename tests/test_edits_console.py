"""The Edits screen with Pilot on a real engine: a committed and a rejected edit from an
experiment, shown live, and one reverted through the confirmation (which names the cascade)."""

from __future__ import annotations

import time

import pytest
import torch

from console.app import RedlineApp
from console.screens.confirm import ConfirmScreen
from console.screens.edits_screen import EditsScreen
from console.widgets.edit_table import EditTable
from engine.commands import RunExperiment
from engine.events import EngineState
from engine.runtime import Engine, EngineConfig
from tests.console.conftest import screen_text
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow
DEADLINE = 90.0  # only a bound for a stuck engine

EDITS = """
    import torch
    from engine.edits import EditRejected

    def run(ctx):
        w = ctx.model.model.layers[0].mlp.down_proj.weight
        with ctx.edit("nudge layer 0"):
            with torch.no_grad():
                w.add_(1e-3)
        try:
            with ctx.edit("scale layer 0 by 50"):
                with torch.no_grad():
                    w.mul_(50)
        except EditRejected:
            pass
        with ctx.edit("nudge again"):
            with torch.no_grad():
                w.add_(1e-3)
        ctx.step("edited")
"""


async def until(pilot, condition, what: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        await pilot.pause(0.05)


async def test_edits_screen_shows_the_journal_and_reverts_through_the_dialog(tmp_path, tiny_model_dir):  # noqa: F811
    engine = Engine(EngineConfig(model=str(tiny_model_dir), run_dir=tmp_path / "run", device="cpu", experiment=None,
                                 health_interval=0.2, evaluate_every=0, auto_checkpoint_every=0))
    app = RedlineApp(engine)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: app.state.engine_state is EngineState.IDLE, "the engine")
        weight = engine.core.model.model.layers[0].mlp.down_proj.weight
        original = weight.detach().clone()
        await pilot.press("e")
        assert isinstance(app.screen, EditsScreen)
        engine.submit(RunExperiment(path=str(write_experiment(tmp_path, EDITS))))
        table = app.screen.query_one(EditTable)
        await until(pilot, lambda: table.row_count == 3, "the edits, live")
        assert [str(table.get_row_at(i)[2]) for i in range(3)] == ["committed", "rejected", "committed"]
        text = screen_text(app)
        assert "nudge again" in text and "scale layer 0 by 50" in text

        table.move_cursor(row=1)  # the rejected edit: its reasons, and nothing to revert
        await pilot.pause()
        detail = screen_text(app)
        assert "scale layer 0 by 50" in detail and "exceeds the edit" in detail and "its baseline" in detail
        await pilot.press("r")
        assert not isinstance(app.screen, ConfirmScreen)

        table.move_cursor(row=2)  # edit 1: edit 3 touched the same tensor, so the dialog names it
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        question = screen_text(app)
        assert "Later edit(s) 3" in question and "model.layers.0.mlp.down_proj.weight" in question
        assert "Revert 2 edits" in question
        await pilot.press("y")
        await until(pilot, lambda: app.state.edits[1].reverted_by is not None, "the revert")
        await until(pilot, lambda: str(table.get_row_at(0)[2]).startswith("revert of"), "the revert rows")
        assert torch.equal(weight.detach().view(torch.uint8), original.view(torch.uint8))
        assert app.state.edits[3].reverted_by is not None
        await pilot.press("escape")
        assert not isinstance(app.screen, EditsScreen)
        await pilot.press("q")
        await until(pilot, lambda: not engine.is_alive(), "the shutdown")
