"""This user's running engines: one small JSON file per serving engine in the runtime directory.

A server registers itself when it starts serving and removes its entry when
it stops; `live_engines` is how `redline ps` and `redline attach` find
engines. An entry whose process is gone (a SIGKILLed engine) is removed,
together with the socket it left behind, the next time anyone looks.
No torch here.
"""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path

from engine.runtime.socket_paths import is_answering, runtime_dir

_serial = itertools.count(1)


def registry_dir() -> Path:
    path = runtime_dir() / "engines"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


def register(info: dict) -> Path:
    """Write this engine's entry (pid, socket, run_dir, model, started_at); returns its path."""
    entry = registry_dir() / f"{os.getpid()}-{next(_serial)}.json"
    temp = entry.with_name("." + entry.name)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(info, fh)
    os.replace(temp, entry)
    return entry


def unregister(entry: Path | None) -> None:
    if entry is not None:
        try:
            entry.unlink()
        except FileNotFoundError:
            pass


def pid_alive(pid: int) -> bool:
    """Whether process `pid` runs (a zombie, killed but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return True


def live_engines(clean: bool = True) -> list[dict]:
    """Entries of engines whose process lives and whose socket answers, oldest first; the rest are cleaned."""
    found = []
    for entry in sorted(registry_dir().glob("*.json")):
        try:
            info = json.loads(entry.read_text(encoding="utf-8"))
            pid, sock = int(info["pid"]), str(info["socket"])
        except (OSError, ValueError, KeyError, TypeError):
            if clean:
                unregister(entry)
            continue
        if pid_alive(pid) and is_answering(sock):
            info["entry"] = str(entry)
            found.append(info)
        elif clean and not pid_alive(pid):
            remove_stale_socket(Path(sock))
            unregister(entry)
    return sorted(found, key=lambda i: i.get("started_at", 0.0))


def remove_stale_socket(path: Path) -> bool:
    """Remove a socket file nothing answers on; True if one was removed."""
    try:
        if not path.is_socket() or is_answering(path, timeout=1.0):
            return False
        path.unlink()
        return True
    except OSError:
        return False
