"""The alert journal (`alerts.jsonl`): one JSON object per line, each sealed with a checksum.

Appending never glues a new alert onto a line torn by a crash or damage (a missing final
newline is supplied first), and reading reports every damaged line by number instead of
failing or silently returning altered alerts. A line without a checksum counts as damaged.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import blake3

from engine.fsutil import FILE_MODE

CHECKSUM_KEY = "checksum"


def _seal(record: dict) -> str:
    body = json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":"), default=str)
    return blake3.blake3(body.encode("utf-8")).hexdigest()[:16]


def encode_alert(alert: dict) -> str:
    """One journal line (no newline) for a JSON-safe alert dict."""
    record = {k: v for k, v in alert.items() if k != CHECKSUM_KEY}
    return json.dumps({**record, CHECKSUM_KEY: _seal(record)}, ensure_ascii=False, default=str)


def append_alert(path: str | os.PathLike, alert: dict) -> None:
    """Append one alert line to a 0600 file, first ending a torn last line if there is one."""
    line = (encode_alert(alert) + "\n").encode("utf-8")
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        os.write(fd, line)
    finally:
        os.close(fd)


@dataclass
class JournalContents:
    alerts: list[dict] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)  # "line N: why", one per unusable line


def read_journal(path: str | os.PathLike) -> JournalContents:
    """Every intact alert of the journal, oldest first, and a note for each damaged line."""
    out = JournalContents()
    raw = Path(path).read_bytes()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            out.damaged.append(f"line {number}: not valid JSON (torn or overwritten)")
            continue
        if not isinstance(record, dict):
            out.damaged.append(f"line {number}: not an alert record")
            continue
        seal = record.pop(CHECKSUM_KEY, None)
        if seal is None:
            out.damaged.append(f"line {number}: its checksum is missing")
            continue
        if seal != _seal(record):
            out.damaged.append(f"line {number}: its contents do not match its checksum")
            continue
        out.alerts.append(record)
    return out


__all__ = ["JournalContents", "append_alert", "encode_alert", "read_journal"]
