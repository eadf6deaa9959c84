"""The console driven with Pilot on a fixed recording (read-only, deterministic)."""

from __future__ import annotations

import json
import time

import pytest
from rich.console import Console
from textual.widgets import RichLog, Tabs

from console.app import RedlineApp
from console.replay import ReplaySource
from console.screens.compare_view import CompareView
from console.screens.help_screen import HelpScreen, key_table
from console.widgets.alert_stream import AlertStream
from engine import events as ev
from console.widgets.change_bars import ChangeBars
from console.widgets.checkpoint_table import CheckpointTable
from console.widgets.engine_header import EngineHeader
from tests.console.conftest import notices, screen_text

WIDE = (160, 48)


def stream_text(app: RedlineApp) -> str:
    log = app.main.query_one("#stream-log", RichLog)
    return "\n".join(strip.text for strip in log.lines)


def make_app(recording, **kwargs) -> RedlineApp:
    return RedlineApp(ReplaySource(recording), **kwargs)


async def test_a_recording_fills_every_panel(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        header = str(app.main.query_one(EngineHeader).render())
        assert "RUNNING" in header and "step 42" in header and "up 42s" in header and "READ-ONLY" in header
        table = app.main.query_one(CheckpointTable)
        assert table.row_count == 4
        assert table.selected_id.endswith("04ab04cd")  # newest first
        title = str(app.main.query_one("#panel-checkpoints").border_title)
        assert title.startswith("Checkpoints · 4 · ") and title.endswith(" MiB on disk")
        assert "lm_head.weight" in str(app.main.query_one("#coupling-text").render())
        assert "perplexity on held-out text" in str(app.main.query_one("#progress").render())
        assert not app.main.has_class("-compact")


async def test_rich_measures_with_the_terminal_size_it_is_told(recording):
    """Rich asks the OS for the terminal's size at every measure unless told; the app tells it, on resize too."""
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert tuple(app.console.size) == WIDE
        await pilot.resize_terminal(100, 30)
        await pilot.pause()
        assert tuple(app.console.size) == (100, 30)


async def test_text_from_data_is_shown_literally(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        text = stream_text(app)
        assert "[red]not red[/red] and ␛[31mnot an escape␛[0m" in text
        table = app.main.query_one(CheckpointTable)
        purposes = [str(table.get_row_at(i)[-1]) for i in range(table.row_count)]
        assert "[bold red]fake markup[/] and ␛[2J escape" in purposes


async def test_checkpoint_cells_are_never_read_as_markup(tmp_path):
    """Every column, not only the purpose: an id from another tool ("[b]...") is shown as written."""
    odd = "[bold]odd[/bold]"
    info = ev.CheckpointInfo(id=odd, created=1760000000.0, purpose="p", state="manual", size_bytes=1 << 20)
    log = tmp_path / "odd.jsonl"
    log.write_text(json.dumps(ev.CheckpointList(checkpoints=(info,), disk_usage=1 << 20).to_dict()) + "\n")
    app = make_app(log)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        table = app.main.query_one(CheckpointTable)
        assert str(table.get_row_at(0)[0]) == odd
        assert odd in screen_text(app)


async def test_severity_toggles_and_text_filter(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        assert "INFO log:experiment: step 10" in stream_text(app)
        await pilot.press("5")  # hide INFO
        text = stream_text(app)
        assert "step 10" not in text and "CRIT" in text and "HIGH" in text
        await pilot.press("1")  # hide CRITICAL too
        assert "CRIT" not in stream_text(app)
        await pilot.press("1", "5", "slash", *"nan", "enter")
        lines = [line for line in stream_text(app).splitlines() if line.strip()]
        assert lines and all("nan" in line.lower() or not line.startswith("0") for line in lines)
        assert "NaN values in" in stream_text(app) and "rolled back" not in stream_text(app)
        stream = app.main.query_one(AlertStream)
        assert stream.text_filter == "nan"
        await pilot.press("slash", "escape")  # Esc clears the filter
        assert stream.text_filter == "" and "rolled back" in stream_text(app)


async def test_read_only_hides_and_refuses_mutating_keys(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        await pilot.pause()
        shown = {b.binding.action for b in app.screen.active_bindings.values()}
        assert {"save", "restore", "emergency_stop", "pause"}.isdisjoint(shown)
        assert {"compare", "help", "quit"} <= shown
        await pilot.press("s", "ctrl+x", "p", "R")
        await pilot.pause()
        assert not app.main.save_prompt.is_open
        refused = [n for n in notices(app) if "refused" in n]
        assert len(refused) == 4 and all("read-only" in n for n in refused)
        assert "emergency stop ignored" not in stream_text(app)  # never reached the source


@pytest.mark.slow
async def test_help_opens_with_question_mark_and_f1(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        for key in ("question_mark", "f1"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, HelpScreen)
            app.screen.query_one("#keys").scroll_visible(animate=False)  # the key table follows the guide
            await pilot.pause()
            text = screen_text(app)
            assert "emergency_stop" in text and "EMERGENCY STOP" in text
            await pilot.press("escape")
            assert not isinstance(app.screen, HelpScreen)


@pytest.mark.slow
async def test_palette_lists_actions_and_switches_theme(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        titles = [c.title for c in app.get_system_commands(app.screen)]
        assert {"Compare with baseline", "Filter alerts", "Help", "Quit", "Theme: redline-light"} <= set(titles)
        assert "Save checkpoint" not in titles  # read-only
        assert app.theme == "redline-dark"
        await pilot.press("ctrl+p")
        await pilot.pause()
        await pilot.press(*"redline-light")
        await pilot.pause(0.3)
        await pilot.press("enter")
        await pilot.pause()
        assert app.theme == "redline-light"


async def test_keymap_overrides_a_key(recording):
    app = make_app(recording, keymap={"help": "h"}, notes=["keymap k.toml: unknown binding id 'sav'"])
    async with app.run_test(size=WIDE, notifications=True) as pilot:
        assert any("unknown binding id 'sav'" in n for n in notices(app))  # a bad entry is reported, not fatal
        await pilot.press("question_mark")
        assert not isinstance(app.screen, HelpScreen)
        await pilot.press("h")
        await pilot.pause()
        assert isinstance(app.screen, HelpScreen)
        assert "h Help" in screen_text(app).splitlines()[-1]  # the footer shows the new key
        console = Console(width=140, record=True)
        console.print(key_table(app, app.keymap))
        help_row = next(line for line in console.export_text().splitlines() if " help " in line)
        assert help_row.split()[0] == "h"


async def test_compare_view_draws_the_recorded_comparison(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        table = app.main.query_one(CheckpointTable)
        table.focus()
        await pilot.press("down", "down")
        assert table.selected_id.endswith("02ab02cd")
        await pilot.press("d")
        await pilot.pause()
        assert isinstance(app.screen, CompareView)
        bars = str(app.screen.query_one(ChangeBars).render())
        assert "5 tensor(s) differ" in bars and "o_proj" in bars and "█" in bars


def test_checkpoint_times_drop_the_date_only_for_today():
    from console.widgets.checkpoint_table import saved_at

    now = time.time()
    today = time.localtime(now).tm_yday, time.localtime(now).tm_year
    assert saved_at(now, today) == time.strftime("%H:%M:%S", time.localtime(now))
    older = now - 3 * 86400
    assert saved_at(older, today) == time.strftime("%m-%d %H:%M", time.localtime(older))
    t = time.localtime(now)
    last_year = time.mktime((t.tm_year - 1, t.tm_mon, t.tm_mday, 12, 0, 0, 0, 0, -1))  # this date, a year ago
    assert saved_at(last_year, today) == time.strftime("%m-%d %H:%M", time.localtime(last_year))


async def test_compact_layout_switches_panels(recording):
    app = make_app(recording)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.main.has_class("-compact")
        assert app.main.query_one("#panel-health").display and not app.main.query_one("#panel-alerts").display
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert app.main.query_one(Tabs).active == "tab-alerts"
        assert app.main.query_one("#panel-alerts").display and not app.main.query_one("#panel-health").display
        await pilot.press("slash")  # the filter brings the alert stream forward
        assert app.main.query_one(Tabs).active == "tab-alerts"


async def test_compact_stream_is_drawn_when_shown_at_its_own_width(recording):
    """Behind a tab the stream has no width: alerts arriving then are not wrapped to a guess (they were
    drawn 20 cells wide, then again when shown); showing the panel draws every one at its width."""
    app = make_app(recording)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        stream = app.main.query_one(AlertStream)
        assert not stream.size.width and app.state.stream
        assert not stream.log_view.lines
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert stream.size.width
        text = stream_text(app)
        assert "safety_monitor: perplexity 14.9 is 26% above baseline 11.8" in text  # one line: 74 cells
        assert f"({len(app.state.stream)} shown)" in str(stream.query_one("#stream-status").render())
        await pilot.press("left_square_bracket")  # hidden again, then a new alert, then shown
        await pilot.pause()
        from console.console_state import StreamEntry

        late = StreamEntry(2e9, "HIGH", "test", "arrived while the stream was hidden")
        app.state.stream.append(late)
        stream.add([late])
        assert not stream.size.width and "arrived while" not in stream_text(app)
        await pilot.press("right_square_bracket")
        await pilot.pause()
        assert "test: arrived while the stream was hidden" in stream_text(app)


async def test_quit_ends_a_replay_with_code_zero(recording):
    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("q")
        await pilot.pause(0.2)
    assert app.return_code == 0


async def test_stream_follows_new_entries_unless_scrolled_back(recording):
    from console.console_state import StreamEntry

    app = make_app(recording)
    async with app.run_test(size=WIDE) as pilot:
        await pilot.pause()
        stream = app.main.query_one(AlertStream)
        log = stream.log_view
        more = [StreamEntry(2e9 + i, "LOW", "test", f"entry {i}") for i in range(40)]
        stream.add(more[:20])
        await pilot.pause()
        assert log.max_scroll_y > 0 and log.is_vertical_scroll_end  # followed
        log.scroll_home(animate=False)
        await pilot.pause()
        stream.add(more[20:])
        await pilot.pause()
        assert log.scroll_y == 0  # the operator's place is kept
        log.scroll_end(animate=False)
        await pilot.pause()
        stream.add([StreamEntry(3e9, "LOW", "test", "newest")])
        await pilot.pause()
        assert log.is_vertical_scroll_end

        stream.show_all()  # a redraw from scratch (a resize, a filter) between entries' arrival and their display
        status = stream.query_one("#stream-status")
        redrawn = str(status.render())
        stream.add(list(app.state.stream)[-3:])  # the entries the console held for later: drawn already
        assert str(status.render()) == redrawn == f" 1:CRIT 2:HIGH 3:MED 4:LOW 5:INFO  ({len(app.state.stream)} shown)"


@pytest.mark.slow
async def test_a_dialog_holds_the_screen_behind_it_and_shows_everything_when_it_closes(tmp_path):
    """Redrawing the dimmed screen behind a dialog is what made the dialog's own answer slow."""
    first, later = time.time(), time.time() + 4.0  # replayed 4 s in: the help is open by then, even under load
    recording = tmp_path / "paced.jsonl"
    recording.write_text("\n".join(json.dumps(e.to_dict()) for e in (
        ev.EngineStateChanged(state=ev.EngineState.RUNNING, model="m", time=first),
        ev.Alert(severity="HIGH", message="while the help was open", source="test", time=later),
    )) + "\n")
    app = RedlineApp(ReplaySource(recording, speed=1.0))
    async with app.run_test(size=WIDE) as pilot:
        await pilot.press("question_mark")
        assert isinstance(app.screen, HelpScreen)
        assert not any("while the help" in entry.text for entry in app.state.stream)  # arrives after it opened
        deadline = time.monotonic() + 30
        while not any("while the help" in entry.text for entry in app.state.stream) and time.monotonic() < deadline:
            await pilot.pause(0.1)
        assert "while the help was open" not in stream_text(app)  # held: the dimmed screen is not redrawn
        await pilot.press("escape")
        await pilot.pause()
        assert "while the help was open" in stream_text(app)
