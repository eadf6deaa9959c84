"""The alert stream's renderable draws exactly what rich's Text draws, fast path and wrapped path alike."""

from __future__ import annotations

import pytest
from rich.console import Console
from rich.segment import Segment
from rich.style import Style
from rich.text import Text

from console.widgets.stream_lines import StreamLine, StreamLines

DIM, RED = Style(dim=True), Style(color="red", bold=True)
MESSAGES = ["short", "", "x" * 70, "word " * 30, "日本語のテキスト " * 6, "exactly", "tab␉shown [red]literal[/red]"]


def lines(width: int) -> list[StreamLine]:
    out = []
    for i, message in enumerate(MESSAGES):
        prefix = f"12:00:{i:02d} "
        out.append(StreamLine(((prefix, DIM), ("HIGH ", RED), ("source: ", DIM), (message, RED if i % 2 else Style()))))
    # a line exactly as wide as the width, and one a cell wider
    out.append(StreamLine((("a" * (width - 5), DIM), ("bcdef", RED))))
    out.append(StreamLine((("a" * (width - 5), DIM), ("bcdefg", RED))))
    return out


def drawn(renderable, width: int) -> list[list[tuple[str, str]]]:
    console = Console(width=width, force_terminal=True, color_system="truecolor")
    rendered = console.render_lines(renderable, console.options.update_width(width), pad=False)
    return [[(s.text, str(s.style) if s.style else "") for s in Segment.simplify(line)] for line in rendered]


@pytest.mark.parametrize("width", [20, 40, 80, 160])
def test_stream_lines_draw_what_the_text_draws(width):
    stream = lines(width)
    assert drawn(StreamLines(stream), width) == drawn(Text("\n").join(line.as_text() for line in stream), width)


def test_width_counts_cells_of_wide_characters():
    assert StreamLine((("日本", Style()), ("ab", DIM))).cells == 6
    assert StreamLines([StreamLine((("abc", Style()),)), StreamLine((("日本", Style()),))]).__rich_measure__(
        Console(), Console().options).maximum == 4
