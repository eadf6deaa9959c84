"""The unchanged console app on an engine attached over its socket (console.engine_client), driven with Pilot."""

from __future__ import annotations

import pytest

from console.app import EngineAnswered, RedlineApp
from console.engine_client import EngineClient
from console.screens.save_dialog import SaveDialog
from engine.events import EngineState
from engine.runtime.socket_paths import socket_path
from tests.console.test_console_engine import KEEP_CHANGING, WIDE, make_engine, until
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _private_runtime_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))


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
            await pilot.press("s")
            assert isinstance(app.screen, SaveDialog)
            await pilot.press(*"socket", "enter")  # short: the running engine keeps Pilot waiting ~2 s per key
            await until(pilot, lambda: any(d.command == "save" and d.ok for d in answers), "the save")
            await until(pilot, lambda: any(c.purpose == "socket" for c in app.state.checkpoints), "the table")
            await pilot.press("q")  # attached: quitting detaches at once
        assert app.return_code == 0 and not client.is_alive()
        assert engine.is_alive() and engine.state is EngineState.RUNNING
    finally:
        engine.shutdown(timeout=60)
