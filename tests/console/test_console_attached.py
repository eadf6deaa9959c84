"""The unchanged console app on an engine attached over its socket (console.engine_client), driven with Pilot."""

from __future__ import annotations

import pytest

from console.app import EngineAnswered, RedlineApp
from console.engine_client import EngineClient
from console.screens.confirm import ConfirmScreen
from console.screens.quit_dialog import QuitDialog
from engine.events import EngineState
from engine.runtime.socket_paths import socket_path
from tests.console.test_console_engine import KEEP_CHANGING, WIDE, make_engine, until
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


def footer_offers_take_control(app: RedlineApp) -> bool:
    return any(key.action == "take_control" for key in app.screen.query("FooterKey"))  # what the footer shows now


async def test_attached_console_saves_shows_its_role_and_detaches(tmp_path, tiny_model_dir):
    engine = make_engine(tiny_model_dir, tmp_path / "run", experiment=write_experiment(tmp_path, KEEP_CHANGING))
    engine.config.serve = True
    engine.start()
    try:
        client = EngineClient(socket_path(tmp_path / "run"))
        client.start()
        answers = []
        app = RedlineApp(client, watch_terminal=False)
        hook = lambda m: answers.append(m.done) if isinstance(m, EngineAnswered) else None  # noqa: E731
        async with app.run_test(size=WIDE, message_hook=hook) as pilot:
            await until(pilot, lambda: app.state.engine_state is EngineState.RUNNING and app.state.checkpoints,
                        "the snapshot and the experiment")
            await until(pilot, lambda: app.state.history, "the gauge history")
            assert "CONTROLLER · 1 console" in str(app.main.header.render())
            assert not footer_offers_take_control(app)  # already the controller: no `c` in the footer
            await pilot.press("s")
            assert app.main.save_prompt.is_open
            await pilot.press(*"ssh", "enter")  # short: each key waits for the busy app to idle
            await until(pilot, lambda: any(d.command == "save" and d.ok for d in answers), "the save")
            await until(pilot, lambda: any(c.purpose == "ssh" for c in app.state.checkpoints), "the table")
            other = EngineClient(socket_path(tmp_path / "run"), name="laptop")
            other.start()  # a second console: the header counts it live
            await until(pilot, lambda: "CONTROLLER · 2 consoles" in str(app.main.header.render()), "the count")
            other.take_control()  # the other console takes over: this one is told and becomes an observer
            await until(pilot, lambda: "OBSERVER · 2 consoles" in str(app.main.header.render()), "the new role")
            assert any("now the observer" in e.text and "laptop" in e.text for e in app.state.stream)
            await until(pilot, lambda: footer_offers_take_control(app), "`c` in the footer of the observer")
            await pilot.press("c")  # and takes it back, after confirming
            assert isinstance(app.screen, ConfirmScreen)
            await pilot.press("y")
            await until(pilot, lambda: other.role == "observer" and client.role == "controller", "the takeover")
            await until(pilot, lambda: not footer_offers_take_control(app), "`c` to leave the controller's footer")
            other.shutdown()
            await until(pilot, lambda: "CONTROLLER · 1 console" in str(app.main.header.render()), "the count")
            await pilot.press("q")  # attached: q asks whether to stop the engine or detach
            assert isinstance(app.screen, QuitDialog)
            await pilot.press("d")
        assert app.return_code == 0 and not client.is_alive() and not app.engine_stopped
        assert engine.is_alive() and engine.state is EngineState.RUNNING

    finally:
        engine.shutdown(timeout=60)
