"""Watching a checkpoint directory for changes made by other processes (watchdog).

Another experiment may write checkpoints into the same run directory. The
observer thread never touches the model or the checkpoint manager: it only
calls `on_change()`, which should set a flag and wake the engine thread; the
engine thread re-lists the checkpoints and publishes what appeared or vanished.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from watchdog.events import FileSystemEvent, FileSystemEventHandler
from watchdog.observers import Observer

log = logging.getLogger(__name__)

_RELEVANT = {"created", "deleted", "moved", "closed"}


class _Forward(FileSystemEventHandler):
    def __init__(self, on_change: Callable[[], None]):
        self._on_change = on_change

    def on_any_event(self, event: FileSystemEvent) -> None:
        if event.event_type in _RELEVANT and not event.is_directory:
            self._on_change()


class RunDirWatcher:
    """Calls `on_change()` (from the observer thread) when files in `directory` come or go."""

    def __init__(self, directory: str | Path, on_change: Callable[[], None]):
        self.directory = Path(directory)
        self._on_change = on_change
        self._observer: Observer | None = None

    def start(self) -> bool:
        """Start watching; False (and a log line) when the directory cannot be watched."""
        if self._observer is not None:
            return True
        if not self.directory.is_dir():
            log.warning("not watching %s: no such directory", self.directory)
            return False
        observer = Observer()
        observer.daemon = True
        observer.schedule(_Forward(self._on_change), str(self.directory), recursive=False)
        try:
            observer.start()
        except OSError as exc:  # e.g. the inotify watch limit is reached
            log.warning("cannot watch %s: %s", self.directory, exc)
            return False
        self._observer = observer
        return True

    @property
    def running(self) -> bool:
        return self._observer is not None and self._observer.is_alive()

    def stop(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5.0)
