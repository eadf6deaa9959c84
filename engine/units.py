"""Numbers as the operator reads them (sizes, values); shared by engine-built gauges and the console."""

from __future__ import annotations

import re

_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """Bytes from "16G", "512M", "1.5T", "16GiB", "16GB" or "4096" (powers of 1024); ValueError otherwise."""
    match = _SIZE.match(str(text))
    if match is None:
        raise ValueError(f"{text!r} is not a size (a number with an optional K, M, G or T suffix)")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def human_bytes(n: float | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def number(value: float | None) -> str:
    """Four significant digits; "—" for no value yet."""
    if value is None:
        return "—"
    return f"{value:.4g}"
