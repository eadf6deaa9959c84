"""Colours and text styles for severities, taken from the active theme's variables.

Which severity a value has is the engine's decision (engine.policy); this
module only says how each severity looks.
"""

from __future__ import annotations

from rich.style import Style
from textual.app import App
from textual.color import Color, ColorParseError


def severity_colour(app: App, severity: str) -> Color:
    variables = app.theme_variables or app.get_css_variables()
    value = variables.get(f"sev-{severity.lower()}", variables.get("foreground", "white"))
    try:
        return Color.parse(value)
    except ColorParseError:
        return Color(255, 255, 255)


def severity_style(app: App, severity: str, *, badge: bool = False) -> Style:
    """Text style for a severity; `badge`: coloured background for short labels."""
    colour = severity_colour(app, severity).rich_color
    bold = severity in ("CRITICAL", "HIGH")
    if badge:
        return Style(bgcolor=colour, color="black" if app.current_theme.dark else "white", bold=True)
    return Style(color=colour, bold=bold)
