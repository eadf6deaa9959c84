"""SVG snapshots of the console on the fixed recording (replay clock, UTC, no blinking)."""

from __future__ import annotations

from console.app import RedlineApp
from console.replay import ReplaySource
from tests.console.conftest import RECORDING


def app() -> RedlineApp:
    return RedlineApp(ReplaySource(RECORDING))


async def settle(pilot) -> None:
    await pilot.pause()
    await pilot.wait_for_scheduled_animations()


def test_main_screen_80x24(snap_compare):
    assert snap_compare(app(), terminal_size=(80, 24), run_before=settle)


def test_main_screen_160x48(snap_compare):
    assert snap_compare(app(), terminal_size=(160, 48), run_before=settle)


def test_alerts_panel_80x24(snap_compare):
    assert snap_compare(app(), terminal_size=(80, 24), press=["right_square_bracket"], run_before=settle)


def test_compare_view_160x48(snap_compare):
    async def select_and_compare(pilot):
        await settle(pilot)
        pilot.app.main.query_one("#checkpoints").focus()
        await pilot.press("down", "down", "d")
        await settle(pilot)

    assert snap_compare(app(), terminal_size=(160, 48), run_before=select_and_compare)
