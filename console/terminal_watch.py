"""Notice the terminal going away, even when the UI loop is stuck writing to it.

When an SSH connection drops, the tty hangs up. Textual's writer thread then
dies on EIO and, once its small queue is full, the UI loop blocks for good on
the next screen write, so a handler running on that loop (SIGHUP included)
may never run. This thread polls the terminal for a hang-up on its own: it
asks the app to stop the engine safely and exit, and if the process is still
there after `grace` seconds it stops the engine itself and ends the process.
No orphan is left spinning, and the engine never dies mid-step.
"""

from __future__ import annotations

import os
import select
import sys
import threading
from collections.abc import Callable

EXIT_TERMINAL_LOST = 129  # 128 + SIGHUP


def terminal_fds() -> list[int]:
    """The file descriptors of the process's terminal (stdin, stdout, stderr that are ttys)."""
    fds = []
    for stream in (sys.__stdin__, sys.__stdout__, sys.__stderr__):
        try:
            fd = stream.fileno() if stream is not None else -1
        except (OSError, ValueError):
            continue
        if fd >= 0 and os.isatty(fd) and fd not in fds:
            fds.append(fd)
    return fds


class TerminalWatch(threading.Thread):
    def __init__(
        self,
        fds: list[int],
        on_lost: Callable[[], None],
        last_resort: Callable[[], None],
        *,
        grace: float = 2.0,
        interval: float = 0.5,
    ) -> None:
        """`on_lost` is called from this thread and must be thread-safe (e.g. call_soon_threadsafe).
        `last_resort` stops the engine directly; then the process exits with EXIT_TERMINAL_LOST."""
        super().__init__(name="redline-terminal-watch", daemon=True)
        self.fds = fds
        self.on_lost = on_lost
        self.last_resort = last_resort
        self.grace = grace
        self.interval = interval
        self.lost = threading.Event()
        self._done = threading.Event()

    def stop(self) -> None:
        """The console ended normally: nothing more to watch."""
        self._done.set()

    def run(self) -> None:
        poll = select.poll()
        for fd in self.fds:
            poll.register(fd, 0)  # no events asked: only hang-up and errors are reported
        while not self._done.is_set():
            if poll.poll(self.interval * 1000):
                break
        else:
            return
        self.lost.set()
        try:
            self.on_lost()
        except Exception:
            pass
        if self._done.wait(self.grace):
            return
        try:
            self.last_resort()
        finally:
            os._exit(EXIT_TERMINAL_LOST)
