"""PaintNotice in a real Textual app: the callback runs when a frame takes the widget's new content, not when
another widget's frame goes out first (the console's panels wait for the answer's frame on this)."""

from __future__ import annotations

from textual.app import App, ComposeResult
from textual.widgets import Static

from console.widgets.paint_notice import PaintNotice


class Watched(PaintNotice, Static):
    pass


class TwoLines(App):
    def compose(self) -> ComposeResult:
        yield Watched("answer: none", id="answer")
        yield Static("panel: 0", id="panel")


async def test_the_callback_runs_with_the_frame_that_takes_the_widget_and_not_before():
    app = TwoLines()
    async with app.run_test() as pilot:
        answer, panel = app.query_one("#answer", Watched), app.query_one("#panel", Static)
        await pilot.pause()
        painted: list[str] = []
        answer.when_painted(lambda: painted.append(str(answer.render())))
        panel.update("panel: 1")  # another widget's frame
        await pilot.pause()
        await pilot.pause()
        assert painted == []
        answer.update("answer: saved")
        await pilot.pause()
        await pilot.pause()
        assert painted == ["answer: saved"]  # once, with the new content
        answer.update("answer: saved again")
        await pilot.pause()
        await pilot.pause()
        assert painted == ["answer: saved"]  # a callback runs once
