"""Severity levels and their colours, taken from the active theme's variables."""

from __future__ import annotations

from rich.style import Style
from textual.app import App
from textual.color import Color, ColorParseError

from engine.events import EngineState

STATE_SEVERITY = {
    EngineState.ERROR: "CRITICAL",
    EngineState.STOPPING: "CRITICAL",
    EngineState.RECOVERING: "HIGH",
    EngineState.PAUSED: "MEDIUM",
    EngineState.RUNNING: "LOW",
}

HEALTH_SEVERITY = {"CRITICAL": "CRITICAL", "WARNING": "MEDIUM", "OK": "INFO"}


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
