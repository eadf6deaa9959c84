"""The save line on its own: a quick answer is drawn without a "saving…" frame before it, a slow one
says the engine is working, and a second Enter while the first save is on its way saves nothing more."""

from __future__ import annotations

import asyncio

from textual.app import App, ComposeResult

from console.widgets.save_prompt import WORKING_AFTER, SavePrompt


class PromptApp(App):
    def __init__(self, working_after: float = WORKING_AFTER) -> None:
        super().__init__()
        self.working_after = working_after
        self.chosen: list[str | None] = []

    def compose(self) -> ComposeResult:
        yield SavePrompt(id="save")

    def on_save_prompt_chosen(self, message: SavePrompt.Chosen) -> None:
        self.chosen.append(message.purpose)
        self.query_one(SavePrompt).await_answer("saving a checkpoint…", after=self.working_after)


def label(app: App) -> str:
    return str(app.query_one("#save-label").render())


async def test_a_quick_answer_replaces_the_question_directly():
    app = PromptApp(working_after=30.0)  # far longer than Pilot's presses take, however loaded the machine
    async with app.run_test() as pilot:
        prompt = app.query_one(SavePrompt)
        prompt.open()
        await pilot.press("enter", "enter")  # the second Enter comes while the save is on its way
        await pilot.pause()
        assert app.chosen == ["Manual checkpoint"] and not prompt.is_open
        assert "Purpose" in label(app)  # nothing redrawn yet: the answer may come first
        prompt.show_status("saved checkpoint_1")
        await pilot.pause()
        assert label(app) == " saved checkpoint_1"
        prompt.open()
        prompt.await_answer("saving a checkpoint…", after=0.05)
        prompt.show_status("saved checkpoint_2")  # the answer before the working line's time
        await asyncio.sleep(0.3)
        await pilot.pause()
        assert label(app) == " saved checkpoint_2"  # the pending "saving…" never shows after the answer


async def test_a_slow_answer_shows_that_the_engine_works():
    app = PromptApp()
    async with app.run_test() as pilot:
        prompt = app.query_one(SavePrompt)
        prompt.echo_seconds = 0.2  # an echo closes the line after this; the working line must not
        prompt.open()
        await pilot.press(*"x", "enter")
        await asyncio.sleep(2 * WORKING_AFTER + 3 * prompt.echo_seconds)  # a save slower than an echo lasts
        await pilot.pause()
        assert app.chosen == ["x"] and label(app) == " saving a checkpoint…" and prompt.has_class("-open")
        prompt.show_status("saved checkpoint_2")
        await pilot.pause()
        assert label(app) == " saved checkpoint_2"
        await asyncio.sleep(3 * prompt.echo_seconds)
        await pilot.pause()
        assert not prompt.has_class("-open")  # the answer's echo closes the line
        prompt.open()  # asking again starts afresh
        assert prompt.is_open and "Purpose" in label(app)
