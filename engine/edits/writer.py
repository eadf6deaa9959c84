"""The journal's writer: one background thread that makes decided edits durable, in order.

An edit returns once it is decided (copy-on-write, gate, roll back or not); hashing its pre- and
post-edit content, writing and fsyncing the pre-edit blobs and then the journal row happen here,
one entry after another in the order the edits were decided (like PostgreSQL's
synchronous_commit=off: a process killed before an entry's row landed loses that entry together
with its effect on the in-memory model, and the journal on disk stays consistent).

- `flush()` waits until everything submitted is written. Whatever persists the model (a
  checkpoint, an export) and every journal read or revert flushes first, so no state on disk
  ever includes an edit whose pre-edit content is not on disk.
- Bounded: `submit` waits while the entries not yet written hold more than `max_pending_bytes`
  of copies (at least one entry is always accepted), so a fast editing loop cannot outrun the
  disk without limit.
- A failure (disk full) stops the writer at that entry, which stays queued with everything
  after it: `check()` (at the next edit) and `flush()` raise JournalWriteFailed naming it;
  `flush()` retries first, so freeing space and flushing again writes everything.
- A process that exits without closing the journal still writes what is queued (atexit).
"""

from __future__ import annotations

import atexit
import collections
import functools
import logging
import threading
import weakref
from collections.abc import Callable
from typing import Any

from engine.edits.errors import JournalWriteFailed

log = logging.getLogger(__name__)


class JournalWriter:
    """Runs `write(entry)` for each submitted entry, in order, on one background thread.

    `describe(entry)` names an entry in errors ("edit 12 ('move Paris')"). Only queued entries
    hold `write` (the journal's method): an idle writer keeps nothing alive, so a journal
    dropped without close() is still collected (and its __del__ stops the thread).
    """

    def __init__(self, write: Callable[[Any], None], describe: Callable[[Any], str], max_pending_bytes: int):
        self._write = weakref.WeakMethod(write)
        self._describe = describe
        self.max_pending_bytes = max_pending_bytes
        self._queue: collections.deque[tuple[Any, int, Callable]] = collections.deque()
        self._pending_bytes = 0
        self._busy = False  # the thread is writing the entry at the head of the queue
        self._failure: BaseException | None = None
        self._closed = False
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._at_exit = functools.partial(_flush_at_exit, weakref.ref(self))
        atexit.register(self._at_exit)

    # -- the editing thread ---------------------------------------------------------------------

    def submit(self, entry: Any, nbytes: int) -> None:
        """Queue `entry` (holding `nbytes` of copies); waits while too much is pending."""
        with self._cond:
            if self._closed:
                raise RuntimeError("the journal's writer is closed")
            while self._queue and self._pending_bytes + nbytes > self.max_pending_bytes and self._failure is None:
                self._cond.wait()
            self._queue.append((entry, nbytes, self._write()))
            self._pending_bytes += nbytes
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="redline-edit-journal", daemon=True)
                self._thread.start()
            self._cond.notify_all()

    def check(self) -> None:
        """Raise JournalWriteFailed if writing an earlier entry failed (nothing retried here)."""
        with self._cond:
            failure = self._failure
            head = self._queue[0][0] if self._queue else None
            waiting = len(self._queue)
        if failure is not None:
            raise self._failed(failure, head, waiting)

    def flush(self) -> None:
        """Wait until every submitted entry is written; after a failure, retry it first, and raise
        JournalWriteFailed (naming the entry, with the cause) if it fails again. On the writer
        thread itself (a listener reading the journal) it returns at once: that would wait forever."""
        if threading.current_thread() is self._thread:
            return
        with self._cond:
            if self._failure is not None:
                self._failure = None  # retry from the entry that failed
                self._cond.notify_all()
            while (self._queue or self._busy) and self._failure is None:
                self._cond.wait()
            failure = self._failure
            head = self._queue[0][0] if self._queue else None
            waiting = len(self._queue)
        if failure is not None:
            raise self._failed(failure, head, waiting)

    @property
    def pending(self) -> int:
        """Entries submitted and not yet written."""
        with self._cond:
            return len(self._queue)

    def close(self) -> None:
        """Flush, then stop the thread (raises JournalWriteFailed with what could not be written)."""
        try:
            self.flush()
        finally:
            self.stop()
            if self._thread is not None and self._thread is not threading.current_thread():
                self._thread.join()

    def stop(self) -> None:
        """Let the thread end once nothing is queued (it ends at once if idle); no waiting."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        atexit.unregister(self._at_exit)

    def _failed(self, failure: BaseException, head: Any, waiting: int) -> JournalWriteFailed:
        what = self._describe(head) if head is not None else "an entry"
        later = f" ({waiting - 1} later entr{'y' if waiting == 2 else 'ies'} wait behind it)" if waiting > 1 else ""
        return JournalWriteFailed(
            f"{what} could not be written to the journal: {type(failure).__name__}: {failure}{later}. Its change is "
            "in the model and its pre-edit copy in memory; fix the cause (e.g. free disk space) and call "
            "journal.flush() to write it, or revert it by hand before closing (closing drops what is not "
            "written).", failure)

    # -- the writer thread ----------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closed and (not self._queue or self._failure is not None):
                    self._cond.wait()
                if not self._queue or self._failure is not None:
                    return  # closed
                entry, nbytes, write = self._queue[0]
                self._busy = True
            try:
                write(entry)
            except BaseException as exc:  # kept and raised in the editing thread: nothing lost silently
                log.error("the edit journal could not write %s: %s", self._describe(entry), exc)
                with self._cond:
                    self._busy = False
                    self._failure = exc
                    self._cond.notify_all()
                continue
            del write
            with self._cond:
                self._queue.popleft()
                self._pending_bytes -= nbytes
                self._busy = False
                self._cond.notify_all()


def _flush_at_exit(ref: weakref.ref) -> None:
    writer = ref()
    if writer is None or writer._closed:
        return
    try:
        writer.flush()
    except JournalWriteFailed as exc:
        log.error("at exit: %s", exc)
