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
        record, damage = _parse(line)
        if record is None:
            out.damaged.append(f"line {number}: {damage}")
        else:
            out.alerts.append(record)
    return out


def read_recent(path: str | os.PathLike, count: int, keep=lambda record: True, block: int = 1 << 16) -> list[dict]:
    """The last `count` intact alerts that `keep` accepts, oldest first, read from the end of the file.

    Attaching to an engine with a long history costs what the recent alerts cost, not the whole journal.
    """
    found: list[dict] = []
    with open(path, "rb") as file:
        end = file.seek(0, os.SEEK_END)
        tail = b""
        while end > 0 and len(found) < count:
            start = max(0, end - block)
            file.seek(start)
            lines = (file.read(end - start) + tail).split(b"\n")
            tail = lines.pop(0) if start > 0 else b""  # maybe cut: completed by the next block back
            for line in reversed(lines):
                record, _ = _parse(line) if line.strip() else (None, "")
                if record is not None and keep(record):
                    found.append(record)
                    if len(found) == count:
                        break
            end = start
    return found[::-1]


def _parse(line: bytes) -> tuple[dict | None, str]:
    """One journal line as its record, or None and why it cannot be used."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None, "not valid JSON (torn or overwritten)"
    if not isinstance(record, dict):
        return None, "not an alert record"
    seal = record.pop(CHECKSUM_KEY, None)
    if seal is None:
        return None, "its checksum is missing"
    if seal != _seal(record):
        return None, "its contents do not match its checksum"
    return record, ""


__all__ = ["JournalContents", "append_alert", "encode_alert", "read_journal", "read_recent"]
