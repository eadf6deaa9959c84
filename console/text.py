"""Literal display of untrusted text: metadata, experiment logs, alert messages.

Data is never parsed as Rich markup, and terminal control characters are
replaced by visible stand-ins, so a checkpoint purpose like "[red]x" or
"\\x1b[2J" shows exactly those characters instead of acting on the terminal.
"""

from __future__ import annotations

from rich.style import Style
from rich.text import Text

# C0 controls become the Unicode "control pictures" (U+2400 + code); DEL and C1 become ␡ / "�".
_CONTROL_PICTURES = {code: chr(0x2400 + code) for code in range(0x20)}
_CONTROL_PICTURES[0x7F] = "\u2421"
_CONTROL_PICTURES.update({code: "\ufffd" for code in range(0x80, 0xA0)})
# Bidirectional controls would let data reorder what the operator reads (a "Trojan Source"
# purpose); they are shown as their code point instead.
_BIDI = [0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
_CONTROL_PICTURES.update({code: f"<U+{code:04X}>" for code in _BIDI})
_KEEP_TAB = dict(_CONTROL_PICTURES)
_KEEP_TAB[0x09] = "    "


def visible(value: object, *, keep_tabs: bool = False) -> str:
    """`value` as a string with every control character replaced by a visible form."""
    return str(value).translate(_KEEP_TAB if keep_tabs else _CONTROL_PICTURES)


def literal(value: object, style: str | Style = "", *, keep_tabs: bool = False) -> Text:
    """A Rich Text holding `value` literally: no markup, no escapes, no emoji codes."""
    return Text(visible(value, keep_tabs=keep_tabs), style=style, no_wrap=False)


def shorten(value: str, width: int) -> str:
    """`value` cut to `width` cells, marking the cut with an ellipsis."""
    if width <= 0:
        return ""
    if len(value) <= width:
        return value
    return value[: max(width - 1, 0)] + "…"
