"""Which process holds the model of a run directory's journal: an flock on `<edits>/owner.lock`.

The process that opens an EditJournal (the engine, or a script) holds the lock until it closes
the journal or exits (the kernel drops it on SIGKILL too). The CLI asks `owner_pid` before
changing anything, so it never reverts behind an engine's back. Imports no torch.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from engine.fsutil import FILE_MODE

LOCK_NAME = "owner.lock"


def take_ownership(edits_dir: Path) -> int | None:
    """The locked file's descriptor, or None when another process (or journal) holds it."""
    fd = os.open(edits_dir / LOCK_NAME, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode("ascii"), 0)
    return fd


def release(fd: int) -> None:
    os.close(fd)  # closing drops the flock


def owner_pid(edits_dir: Path) -> int | None:
    """The pid of the process holding the journal, or None when nobody holds it."""
    path = edits_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            return int(text) if text.isdigit() else -1
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)
