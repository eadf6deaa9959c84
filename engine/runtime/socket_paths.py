"""Where engine sockets live and how a client reaches one: run-dir sockets, the runtime dir, short links.

An engine serves `<run_dir>/engine.sock`. A Unix socket path must fit in
108 bytes; for a deeper run directory both the server and every client go
through a short symbolic link to the run directory, made in the user's
runtime directory ($XDG_RUNTIME_DIR/redline, else /tmp/redline-$UID, 0700 and
owned by the user). The link's name is a hash of the run directory's real
path, so every process derives the same one. No torch here.
"""

from __future__ import annotations

import hashlib
import os
import socket
import stat
import time
from pathlib import Path

SOCKET_NAME = "engine.sock"
LOG_NAME = "engine.log"  # a background engine's stdout and stderr, beside its socket
MAX_SOCKET_PATH = 107  # bytes of sun_path, leaving the terminating NUL


class SocketPathError(OSError):
    """The runtime directory is unsafe or a socket path cannot be reached."""


def socket_path(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir).expanduser().absolute() / SOCKET_NAME


def runtime_dir() -> Path:
    """This user's private runtime directory for Redline (created 0700; refused if someone else owns it)."""
    base = os.environ.get("XDG_RUNTIME_DIR", "").strip()
    path = Path(base) / "redline" if base and os.path.isdir(base) else Path(f"/tmp/redline-{os.getuid()}")
    try:
        path.mkdir(mode=0o700, parents=False, exist_ok=True)
    except FileNotFoundError:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise SocketPathError(f"{path} is not a directory owned by this user; remove it or set XDG_RUNTIME_DIR")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def connectable_path(path: str | os.PathLike) -> str:
    """`path`, or an equivalent short one through a link in the runtime dir when `path` is too long to bind."""
    path = Path(path).absolute()
    if len(os.fsencode(str(path))) <= MAX_SOCKET_PATH:
        return str(path)
    directory = Path(os.path.realpath(path.parent))
    digest = hashlib.sha256(os.fsencode(str(directory))).hexdigest()[:16]
    link = runtime_dir() / f"run-{digest}"
    _point_link(link, directory)
    short = link / path.name
    if len(os.fsencode(str(short))) > MAX_SOCKET_PATH:
        raise SocketPathError(f"even the short path {short} is too long for a Unix socket; set XDG_RUNTIME_DIR "
                              "to a shorter directory")
    return str(short)


def _point_link(link: Path, target: Path) -> None:
    """Make `link` a symbolic link to `target`, replacing another link atomically."""
    try:
        if os.readlink(link) == str(target):
            return
    except FileNotFoundError:
        pass
    except OSError:  # something that is not a link is in the way: ours to replace, the dir is private
        pass
    temp = link.with_name(f".{link.name}.{os.getpid()}")
    try:
        os.unlink(temp)
    except FileNotFoundError:
        pass
    os.symlink(target, temp)
    os.replace(temp, link)


def connect(path: str | os.PathLike, timeout: float | None = 5.0) -> socket.socket:
    """A connected Unix stream socket to `path` (long paths through the runtime-dir link)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect(connectable_path(path))
            sock.settimeout(None)
            return sock
        except BlockingIOError:  # the listener's backlog is full for now (a Unix socket does not wait)
            sock.close()
            if deadline is not None and time.monotonic() >= deadline:
                raise
            time.sleep(0.01)
        except BaseException:
            sock.close()
            raise


def is_answering(path: str | os.PathLike, timeout: float = 2.0) -> bool:
    """Whether something accepts connections on the socket at `path`."""
    try:
        connect(path, timeout).close()
        return True
    except OSError:
        return False
