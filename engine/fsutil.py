"""Private, durable file writing: 0600 files, 0700 directories, temp + fsync + rename.

Everything Redline writes into a run directory goes through these helpers, so
the permissions and the crash-safety rules live in one place.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Union

FILE_MODE = 0o600
DIR_MODE = 0o700
TEMP_PREFIX = ".tmp-"  # leftovers with this prefix are removed by their owner on open

#: what atomic_write writes: bytes, chunks of bytes in order, or a function that fills the temp path
Content = Union[bytes, bytearray, memoryview, Iterable, Callable[[Path], object]]


def secure_mkdir(path: str | os.PathLike) -> Path:
    """Create `path` (and parents) as 0700 directories; return it as a Path."""
    p = Path(path)
    p.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    return p


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or unlink inside `path` durable."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike, content: Content, *, fsync: bool = True,
                 temp_dir: str | os.PathLike | None = None, overwrite: bool = True,
                 sync_dir: bool = True) -> bool:
    """Write a whole file so that a crash at any instant leaves the old file or the new one, never a part.

    The content goes to a new private (0600) temp file in `temp_dir` (default: the target's
    directory; it must be on the same file system), which is fsynced, renamed onto `path`, and
    the directory fsynced. `fsync=False` skips both fsyncs: still all-or-nothing if the process
    dies, not after a power loss. `overwrite=False` never replaces a file: it returns False,
    having written nothing, if `path` exists. `sync_dir=False` leaves the directory's fsync to
    a caller that batches many renames. On any failure the temp file is removed.
    """
    target = Path(path)
    tmp = Path(temp_dir if temp_dir is not None else target.parent) / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    try:
        try:
            if callable(content):
                content(tmp)
            else:
                for chunk in (content,) if isinstance(content, (bytes, bytearray, memoryview)) else content:
                    _write_all(fd, chunk)
            if fsync:
                os.fsync(fd)  # syncs the file, whichever descriptor wrote it
        finally:
            os.close(fd)
        if overwrite:
            os.replace(tmp, target)
        else:
            try:
                os.link(tmp, target)  # fails if the target exists: never replaces it
            except FileExistsError:
                return False
            finally:
                os.unlink(tmp)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if fsync and sync_dir:
        fsync_dir(target.parent)
    return True


def atomic_write_text(path: str | os.PathLike, text: str, *, fsync: bool = True) -> None:
    atomic_write(path, text.encode("utf-8"), fsync=fsync)


def seal_directory(directory: str | os.PathLike, *, fsync: bool = True) -> None:
    """Make the files a library wrote into `directory` private (0600) and durable, then the directory.

    For directories built under a temp name and renamed into place (exports, the demo model):
    the rename publishes them whole, this makes what it publishes survive a power loss.
    """
    directory = Path(directory)
    for path in directory.iterdir():
        if path.is_file():
            os.chmod(path, FILE_MODE)
            if fsync:
                with open(path, "rb") as fh:
                    os.fsync(fh.fileno())
    if fsync:
        fsync_dir(directory)


def append_line(path: str | os.PathLike, line: str) -> None:
    """Append one line (a journal record) to a 0600 file, flushed to the OS."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, FILE_MODE)
    try:
        os.write(fd, (line.rstrip("\n") + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        n = os.write(fd, view[: 1 << 30])
        view = view[n:]
