"""One reusable pool of host buffers for the device-to-host copies of checkpoint saves.

Without it every save of a model on CUDA allocated a fresh pinned copy of the whole model,
and torch's caching host allocator keeps page-locked memory once allocated: host memory
that can never be swapped grew with the model and was never given back. The pool lends
buffers by exact size (a model's tensors repeat the same few sizes, so the next save gets
the very same buffers back), owns at most `limit` bytes, and hands its memory back on
`release()` (called at engine shutdown), emptying torch's pinned-memory cache too.

Buffers are pinned where CUDA offers page-locked memory, plain host memory otherwise (CPU-only
torch has no `pin_memory`); the lending logic is the same. Beyond the limit a save still gets
a buffer of the same kind, one the pool does not keep: the held copy of a model on CUDA is
then pinned whatever its size (rollback copies at full speed), and what the save dropped is
cached by torch's pinned-memory allocator for the next save until `release()` empties it.

The held fast-rollback copy (engine/store/snapshot.py) and the pool trade buffers in
`settle()`: a staged buffer the new snapshot keeps leaves the pool, and a buffer the old
snapshot held and the new one does not comes back into it, so repeated saves allocate nothing.
A save that staged nothing (the model is on the CPU: its bytes are read in place) adopts nothing.

Public: `StagingPool`, `staging_pool()` (the process's pool), `configure_staging_pool(limit)`.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable

import torch

DEFAULT_LIMIT = 4 << 30  # bytes the process's pool may own


class StagingPool:
    """Host buffers lent by exact size, at most `limit` bytes owned; thread-safe."""

    def __init__(self, limit: int = DEFAULT_LIMIT, pinned: bool | None = None):
        if limit < 0:
            raise ValueError(f"a staging pool limit cannot be negative ({limit})")
        self.limit = int(limit)
        self.pinned = torch.cuda.is_available() if pinned is None else bool(pinned)
        self._free: dict[int, list[torch.Tensor]] = {}
        self._owned: dict[int, int] = {}  # data_ptr -> nbytes of every buffer the pool owns (lent or free)
        self._lock = threading.Lock()
        self.allocations = 0  # buffers the pool allocated (for tests and bench: reuse means this stops growing)

    @property
    def owned_bytes(self) -> int:
        with self._lock:
            return sum(self._owned.values())

    @property
    def free_bytes(self) -> int:
        with self._lock:
            return sum(b.nbytes for bufs in self._free.values() for b in bufs)

    def owns(self, buf: torch.Tensor) -> bool:
        with self._lock:
            return buf.data_ptr() in self._owned

    def take(self, nbytes: int) -> torch.Tensor:
        """A uint8 host buffer of exactly `nbytes`: a free one of that size, a new one within the
        limit (after dropping free buffers of other sizes if need be), else one of the same kind
        that the pool does not keep."""
        with self._lock:
            free = self._free.get(nbytes)
            if free:
                return free.pop()
            self._make_room(nbytes)
            keep = sum(self._owned.values()) + nbytes <= self.limit and nbytes > 0
        buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned)
        if keep:
            with self._lock:
                self._owned[buf.data_ptr()] = nbytes
                self.allocations += 1
        return buf

    def copy_in(self, src: torch.Tensor) -> torch.Tensor:
        """A pool buffer holding the bytes of contiguous `src` (non_blocking from a device into pinned
        memory: synchronise the device before reading it)."""
        out = self.take(src.nbytes)
        flat = src.detach().reshape(-1).view(torch.uint8)
        out.copy_(flat, non_blocking=out.is_pinned() and src.device.type != "cpu")
        return out

    def give(self, buf: torch.Tensor) -> None:
        """Return a buffer from `take`; one the pool does not keep is simply dropped."""
        with self._lock:
            if buf.data_ptr() in self._owned:
                self._free.setdefault(buf.nbytes, []).append(buf)

    def settle(self, staged: Iterable[torch.Tensor], kept: Iterable[torch.Tensor],
               dropped: Iterable[torch.Tensor] = ()) -> None:
        """After a save: `staged` buffers came from this pool; those in `kept` now belong to the held
        snapshot (the pool lets them go), the rest come back. `dropped` buffers (the old snapshot's, no
        longer held) are adopted while they fit and are standalone buffers of the pool's kind."""
        kept_ptrs = {b.data_ptr() for b in kept}
        lent = False
        with self._lock:
            for buf in staged:
                ptr = buf.data_ptr()
                if ptr not in self._owned:
                    continue
                lent = True
                if ptr in kept_ptrs:
                    del self._owned[ptr]
                else:
                    self._free.setdefault(buf.nbytes, []).append(buf)
            for buf in dropped if lent else ():  # a save that staged nothing (a CPU model) adopts nothing
                ptr = buf.data_ptr()
                if ptr in kept_ptrs or ptr in self._owned:
                    continue
                adoptable = (buf._base is None and buf.dtype == torch.uint8 and buf.nbytes > 0
                             and buf.is_pinned() == self.pinned)
                if adoptable and sum(self._owned.values()) + buf.nbytes <= self.limit:
                    self._owned[ptr] = buf.nbytes
                    self._free.setdefault(buf.nbytes, []).append(buf)

    def release(self) -> None:
        """Free every buffer not lent out and give torch's cached page-locked memory back to the OS."""
        with self._lock:
            for bufs in self._free.values():
                for buf in bufs:
                    self._owned.pop(buf.data_ptr(), None)
            self._free.clear()
        if self.pinned:
            _empty_pinned_cache()

    def _make_room(self, nbytes: int) -> None:
        """Drop free buffers of other sizes, largest first, until `nbytes` more fit (lock held)."""
        over = sum(self._owned.values()) + nbytes - self.limit
        for size in sorted(self._free, reverse=True):
            while over > 0 and self._free[size]:
                buf = self._free[size].pop()
                del self._owned[buf.data_ptr()]
                over -= size
            if over <= 0:
                break
        self._free = {size: bufs for size, bufs in self._free.items() if bufs}


def _empty_pinned_cache() -> None:
    """Hand page-locked blocks torch cached after they were freed back to the OS (CUDA builds only)."""
    empty = getattr(torch._C, "_host_emptyCache", None)
    if empty is not None and torch.cuda.is_available():
        empty()


_pool_lock = threading.Lock()
_pool: StagingPool | None = None


def staging_pool() -> StagingPool:
    """The process's staging pool (created on first use with DEFAULT_LIMIT)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = StagingPool()
        return _pool


def configure_staging_pool(limit: int) -> StagingPool:
    """Set the process's pool limit in bytes; free buffers beyond it are dropped at once."""
    pool = staging_pool()
    with pool._lock:
        pool.limit = int(limit)
        pool._make_room(0)
    return pool
