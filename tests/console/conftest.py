"""Console test helpers: a fixed recording, UTC clock times, and the notifications an app showed."""

from __future__ import annotations

import html
import re
import time
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
RECORDING = FIXTURES / "demo_run.jsonl"


@pytest.fixture(autouse=True)
def _utc_and_clean_env(monkeypatch, tmp_path_factory):
    """Clock times render the same everywhere; no user keymap, NO_COLOR or theme leaks in."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    for name in ("NO_COLOR", "TEXTUAL_THEME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path_factory.getbasetemp() / "config"))
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def recording() -> Path:
    return RECORDING


def notices(app) -> list[str]:
    """The text of every notification the app has on screen."""
    return [str(n.message) for n in app._notifications]


def screen_text(app) -> str:
    """What the terminal shows, as plain text lines (read back from the app's SVG screenshot)."""
    svg = app.export_screenshot()
    rows: dict[float, list[tuple[float, str]]] = {}
    for match in _SVG_TEXT.finditer(svg):
        x, y, text = float(match.group(1)), float(match.group(2)), html.unescape(match.group(3))
        rows.setdefault(y, []).append((x, text))
    lines = []
    for y in sorted(rows):
        line = ""
        for x, text in sorted(rows[y]):
            line = line.ljust(round(x / _CELL_WIDTH)) + text
        lines.append(line.replace("\xa0", " "))
    return "\n".join(lines)


_SVG_TEXT = re.compile(r'<text class="[^"]*" x="([\d.]+)" y="([\d.]+)" textLength="[\d.]+" clip-path="[^"]*">(.*?)</text>')
_CELL_WIDTH = 12.2
