"""Redline's themes: TOML data files in the top-level themes/ (packaged through the console/theme_files
link), turned into Textual themes.

Each file names the Textual base colours and, under [variables], the severity
colours the alert stream and gauges use (sev-critical … sev-info).
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

from textual.theme import Theme

import console

THEMES_DIR = Path(console.__file__).resolve().parent / "theme_files"
DEFAULT_THEME = "redline-dark"
NO_COLOR_THEME = "redline-mono"

#: fallbacks so CSS using the severity variables parses under any theme (Textual's included)
SEVERITY_VARIABLES = {
    "sev-critical": "#ff3b30",
    "sev-high": "#ff8c42",
    "sev-medium": "#e5c07b",
    "sev-low": "#61afef",
    "sev-info": "#a8a8a8",
}

_COLOUR_KEYS = (
    "primary", "secondary", "warning", "error", "success", "accent",
    "foreground", "background", "surface", "panel", "boost",
)
_KNOWN_KEYS = {"name", "dark", "variables", *_COLOUR_KEYS}


class ThemeFileError(ValueError):
    """A theme file that cannot be used; the message names the file and the problem."""


def theme_from_toml(path: Path) -> Theme:
    """The Textual Theme a theme file describes."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ThemeFileError(f"{path}: {exc}") from None
    unknown = sorted(set(data) - _KNOWN_KEYS)
    if unknown:
        raise ThemeFileError(
            f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    if "name" not in data or "primary" not in data:
        raise ThemeFileError(f"{path}: 'name' and 'primary' are required")
    variables = data.get("variables", {})
    if not isinstance(variables, dict) or not all(isinstance(v, str) for v in variables.values()):
        raise ThemeFileError(f"{path}: [variables] must map names to colour strings")
    return Theme(
        name=str(data["name"]),
        dark=bool(data.get("dark", True)),
        variables={**SEVERITY_VARIABLES, **variables},
        **{key: str(data[key]) for key in _COLOUR_KEYS if key in data},
    )


def load_themes(directory: Path = THEMES_DIR) -> list[Theme]:
    """Every theme in `directory`, by file name order."""
    return [theme_from_toml(path) for path in sorted(directory.glob("*.toml"))]


def default_theme_name(environ: os._Environ | dict = os.environ) -> str:
    """redline-mono when NO_COLOR is set (any value, per no-color.org), else redline-dark."""
    return NO_COLOR_THEME if "NO_COLOR" in environ else DEFAULT_THEME
