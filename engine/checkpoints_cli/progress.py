"""A progress bar on stderr for long work, drawn only when stderr is a terminal (never in pipes or logs)."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from engine.units import human_bytes

_WIDTH = 30
_INTERVAL = 0.1  # seconds between redraws


class ProgressBar:
    """`with ProgressBar(total, "verifying") as bar: bar.advance(n)`; a no-op off a terminal."""

    def __init__(self, total: float, label: str, *, unit: str = "B", stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.total = max(float(total), 0.0)
        self.label = label
        self.unit = unit
        self.done = 0.0
        self.shown = _is_terminal(self.stream)
        self._drawn_at = 0.0

    def __enter__(self) -> ProgressBar:
        self._draw(force=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.shown:
            self._draw(force=True)
            self._write("\n")

    def advance(self, amount: float) -> None:
        self.done += amount
        self._draw()

    def _draw(self, force: bool = False) -> None:
        if not self.shown:
            return
        now = time.monotonic()
        if not force and now - self._drawn_at < _INTERVAL:
            return
        self._drawn_at = now
        fraction = min(1.0, self.done / self.total) if self.total else 1.0
        filled = int(fraction * _WIDTH)
        bar = "#" * filled + "." * (_WIDTH - filled)
        self._write(f"\r{self.label} [{bar}] {fraction:4.0%} {self._amount(self.done)}/{self._amount(self.total)}")

    def _amount(self, value: float) -> str:
        return human_bytes(value) if self.unit == "B" else f"{value:.0f}"

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except OSError:
            self.shown = False


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
