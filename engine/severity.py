"""The five alert severities, ordered so that `Severity.CRITICAL > Severity.HIGH`.

Alerts and issues carry the severity as its name (a plain string) so they
serialise to JSON as the guide prints them; this enum is for comparing and
parsing. Imports no torch.
"""

from __future__ import annotations

import enum


class Severity(enum.IntEnum):
    """CRITICAL > HIGH > MEDIUM > LOW > INFO."""

    INFO = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    CRITICAL = 4

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, value: "Severity | str") -> "Severity":
        """Accept a Severity or its name in any case ('critical', ' HIGH ')."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls[value.strip().upper()]
            except KeyError:
                pass
        known = ", ".join(s.name for s in sorted(cls, reverse=True))
        raise ValueError(f"unknown severity {value!r}; use one of {known}")


def status_for(severities) -> str:
    """The check status for a set of issue severities: CRITICAL, WARNING (HIGH/MEDIUM) or OK."""
    worst = max((Severity.parse(s) for s in severities), default=Severity.INFO)
    if worst >= Severity.CRITICAL:
        return "CRITICAL"
    if worst >= Severity.MEDIUM:
        return "WARNING"
    return "OK"
