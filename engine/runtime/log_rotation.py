"""A detached engine's `<run_dir>/engine.log`, kept to a bounded size on disk.

The log gets every event as a JSON line, health up to ten times a second: about 25 KB/s
from a fast experiment, gigabytes over a week-long run. Once the file passes `max_bytes`
it becomes `engine.log.1` (replacing the one before) and a fresh `engine.log` takes its
place on the process's stdout and stderr (`dup2`), so at most twice `max_bytes` stays on
disk. The rotation runs between two writes of whole lines, so no line is split between the
files; `redline replay engine.log.1` then `engine.log` shows the newest part of the run, and
the alert journal (`alerts.jsonl`) keeps every alert regardless.

`REDLINE_LOG_MAX_BYTES` overrides the size (bytes, or with a K, M or G suffix; 0 keeps
the whole log). Only a stdout that is this very file is rotated: started by hand with its
output elsewhere, the process leaves it alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from engine.units import parse_size

MAX_BYTES_VARIABLE = "REDLINE_LOG_MAX_BYTES"
DEFAULT_MAX_BYTES = 64 * 1024**2


def max_bytes_from_environment() -> int:
    """The size limit `REDLINE_LOG_MAX_BYTES` asks for (default 64 MiB); ValueError naming a bad value."""
    text = os.environ.get(MAX_BYTES_VARIABLE, "").strip()
    if not text:
        return DEFAULT_MAX_BYTES
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"{MAX_BYTES_VARIABLE}={text!r} is not a size: use bytes, or a number with a K, M or G "
                         "suffix (64M); 0 keeps the whole log") from None


class LogRotation:
    """Rotates `path` when the process's stdout is that file and it has grown past `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int):
        self.path = Path(path)
        self.max_bytes = int(max_bytes)
        self.rotations = 0

    def writes_here(self) -> bool:
        """Whether fd 1 is `path` itself (the same inode)."""
        try:
            out, here = os.fstat(1), os.stat(self.path)
        except OSError:
            return False
        return (out.st_dev, out.st_ino) == (here.st_dev, here.st_ino)

    def check(self) -> bool:
        """Rotate now if due; True when it did. Call it between writes of whole lines."""
        if self.max_bytes <= 0:
            return False
        try:
            size = os.fstat(1).st_size
        except OSError:
            return False
        if size < self.max_bytes or not self.writes_here():
            return False
        sys.stdout.flush()
        sys.stderr.flush()
        os.replace(self.path, self.path.with_name(self.path.name + ".1"))  # stdout writes on into it meanwhile
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.dup2(fd, 1)
            os.dup2(fd, 2)
        finally:
            os.close(fd)
        self.rotations += 1
        print(f"redline: engine.log passed {self.max_bytes} bytes; the earlier part is {self.path.name}.1",
              file=sys.stderr, flush=True)
        return True
