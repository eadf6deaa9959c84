"""Alert-stream lines as a renderable that skips rich's text machinery when a line fits the width.

Written as one rich `Text`, a thousand alert lines (a snapshot on attach) are split, divided and
wrapped by rich, about 150 ms on a slow machine. These lines are short and already safe to show
(`console.text.visible`: no control characters, no newlines), so a line that fits the width is
yielded as its styled segments as they are, and only a longer one goes through `Text` and its
word wrapping, exactly as before.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions
from rich.measure import Measurement
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

Part = tuple[str, Style]  # a run of visible text and its style


class StreamLine:
    """One line: its styled parts and its width in cells."""

    __slots__ = ("parts", "cells")

    def __init__(self, parts: Sequence[Part]):
        self.parts = tuple(parts)
        self.cells = sum(len(text) if text.isascii() else cell_len(text) for text, _ in self.parts)

    def as_text(self) -> Text:
        text = Text(no_wrap=False)
        for part, style in self.parts:
            text.append(part, style)
        return text


class StreamLines:
    """Several StreamLines, rendered one under the other, each wrapped to the width only when longer."""

    def __init__(self, lines: Sequence[StreamLine]):
        self.lines = lines

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        widest = max((line.cells for line in self.lines), default=0)
        return Measurement(min(widest, 1), widest)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> Iterator[Segment]:
        width = options.max_width
        newline = Segment.line()
        for line in self.lines:
            if line.cells <= width:
                for text, style in line.parts:
                    if text:
                        yield Segment(text, style)
                yield newline
            else:
                yield from console.render(line.as_text(), options)
