"""Numbers as the operator reads them: sizes, durations, clock times."""

from __future__ import annotations

import time

from engine.units import human_bytes, number  # noqa: F401  (one definition, shared with engine gauges)


def duration(seconds: float) -> str:
    """Uptime style: 59s, 12m05s, 3h02m."""
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def clock_time(epoch: float) -> str:
    """HH:MM:SS in local time."""
    return time.strftime("%H:%M:%S", time.localtime(epoch))


def date_time(epoch: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch))
