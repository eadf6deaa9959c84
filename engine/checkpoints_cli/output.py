"""What the commands print: JSON for scripts (one document on stdout), aligned text for people."""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys


def emit(as_json: bool, data: dict, text: str) -> None:
    """Print the result: `data` as JSON (non-finite numbers as strings) or `text`."""
    sys.stdout.write((json.dumps(_finite(data), indent=1, ensure_ascii=False) if as_json else text).rstrip("\n") + "\n")


def _finite(value):
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def local_time(timestamp: float) -> str:
    return _dt.datetime.fromtimestamp(timestamp).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def table(headers: list[str], rows: list[list[str]], right: set[int] = frozenset()) -> str:
    """Columns padded to their widest cell; `right` holds the indexes of right-aligned columns."""
    cells = [headers, *rows]
    widths = [max(len(str(row[i])) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        parts = [str(c).rjust(w) if i in right else str(c).ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def printable(text: object, limit: int = 60) -> str:
    """Metadata as stored is arbitrary: shown without control characters (no terminal escapes), cut to `limit`."""
    shown = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"
