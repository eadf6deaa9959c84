"""Numbers as the operator reads them (sizes, values); shared by engine-built gauges and the console."""

from __future__ import annotations


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
