"""The shared I/O workers of checkpointing: hashing, comparing and file I/O all release the GIL."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def io_pool() -> ThreadPoolExecutor:
    """The process's checkpoint workers, started on first use."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=min(8, max(4, os.cpu_count() or 4)), thread_name_prefix="redline-ckpt"
            )
        return _pool


def run_all(fn, items) -> list:
    """fn over items on the I/O pool; waits for every task before raising the first error."""
    futures = [io_pool().submit(fn, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]
