"""Host buffers for the journal's copy-on-write copies, mapped before an edit needs them.

A copy into newly allocated memory pays a page fault for every 4 KiB page, several times the
cost of the copy itself into memory already mapped; and the journal keeps its copies (until the
writer has them on disk, then held for quick reverts), so malloc cannot hand the next edit the
memory the last one freed. The pool keeps buffers that edits gave back (rolled back, or dropped
from the hold), and `prepare` maps spare buffers ahead of time for the sizes the last edit
copied: the journal's writer thread calls it, so the page faults land on that thread, not on
the edit's critical path. Spare memory is bounded by `limit` bytes; a new buffer of 32 MiB or
more gets huge pages (engine/store/tensors.py).
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter, defaultdict

import torch

from engine.store.tensors import new_host_buffer


class CopyBuffers:
    """Free host buffers by size (plain, unpinned uint8 tensors), at most `limit` bytes."""

    def __init__(self, limit: int):
        self.limit = limit
        self._free: dict[int, list[torch.Tensor]] = defaultdict(list)
        self._bytes = 0
        self._lock = threading.Lock()

    @property
    def spare_bytes(self) -> int:
        return self._bytes

    def take(self, nbytes: int) -> torch.Tensor:
        """A buffer of `nbytes`: a mapped spare when there is one, else a new allocation."""
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                self._bytes -= nbytes
                return free.pop()
        return new_host_buffer(nbytes, pin=False)

    def give(self, buf: torch.Tensor) -> None:
        """Take back a buffer nobody uses any more (kept while within the limit)."""
        if buf.device.type != "cpu" or buf.is_pinned() or buf.dtype != torch.uint8 or not buf.is_contiguous():
            return
        n = buf.nbytes
        with self._lock:
            if n and self._bytes + n <= self.limit:
                self._free[n].append(buf)
                self._bytes += n

    def prepare(self, sizes: Counter) -> None:
        """Have at least `sizes[n]` spare buffers of each size `n` (within the limit), their
        pages mapped now (one write per page, without the GIL) rather than by the next copy."""
        for n, wanted in sizes.items():
            while True:
                with self._lock:
                    if len(self._free.get(n, ())) >= wanted or self._bytes + n > self.limit:
                        break
                buf = new_host_buffer(n, pin=False)
                _touch_pages(buf)
                self.give(buf)

    def clear(self) -> None:
        with self._lock:
            self._free.clear()
            self._bytes = 0


def _touch_pages(buf: torch.Tensor) -> None:
    """Fault in every page of `buf` (memset releases the GIL)."""
    if buf.nbytes:
        ctypes.memset(buf.data_ptr(), 0, buf.nbytes)
