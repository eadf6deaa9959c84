"""Tensor content for the journal: host copies made before a write, hashes, restores, and the
content-addressed blobs of pre-edit content in `<run_dir>/edits/blobs` (engine/store/blobs.py).

A copy is taken on the edit's critical path without hashing it; the journal's writer thread
hashes it later (engine/edits/writer.py). Its blob (named by the hash of the content before
the edit) is written and fsynced by that thread before the journal row that names it
(write-ahead), so a process killed at any moment leaves either no row or a row whose blobs are
on disk. Reverting an old edit reads one file per tensor it touched and never needs the model's
history; the newest host copies stay held up to `hold_bytes`, so reverting a recent edit reads
no file, and copies dropped from the hold go back to the buffer pool (engine/edits/buffers.py).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from engine.edits.buffers import CopyBuffers
from engine.fsutil import TEMP_PREFIX, secure_mkdir
from engine.store.blobs import BlobFiles, blob_header, tensor_hash
from engine.store.errors import CheckpointCorrupted
from engine.store.manifests import TensorRecord
from engine.store.tensors import (as_tensor, byte_view, dtype_name, host_bytes, new_host_buffer, numpy_bytes, sync_devices,
                                  untracked)


@dataclass
class HostCopy:
    """The bytes of one tensor at one moment, on the host; `digest` (their content hash) is
    filled in by whoever hashes them first (the writer thread)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: torch.Tensor  # uint8, contiguous, host
    digest: str | None = None

    def typed(self, device: torch.device | None = None) -> torch.Tensor:
        t = as_tensor(self.data, self.dtype, self.shape)
        return t if device is None or device.type == "cpu" else t.to(device)


def copy_tensor(name: str, t: torch.Tensor, buffers: CopyBuffers | None = None) -> HostCopy:
    """A host copy of `t`'s bytes (not hashed): one copy into a pooled buffer for a CPU tensor."""
    src = t.detach()
    dtype, shape = dtype_name(src.dtype, name), tuple(src.shape)
    if src.device.type == "cpu":
        buf = buffers.take(src.nbytes) if buffers is not None else torch.empty(src.nbytes, dtype=torch.uint8)
        buf.copy_(byte_view(src.contiguous()))
        return HostCopy(name, dtype, shape, buf)
    buf, copied = host_bytes(src, pin=src.device.type == "cuda")
    sync_devices([src])
    if not copied:
        buf = buf.clone()
    return HostCopy(name, dtype, shape, buf)


def hash_copy(copy: HostCopy) -> str:
    """The content hash of a host copy (kept on it: the copy never changes)."""
    if copy.digest is None:
        copy.digest = tensor_hash(copy.dtype, copy.shape, numpy_bytes(copy.data), threads=1)
    return copy.digest


def content_hash(name: str, t: torch.Tensor, threads: int | None = None) -> str:
    """The content hash of a live tensor (as the store names it); copies only off-CPU tensors.
    `threads`: the hasher's threads (None: several for a large tensor)."""
    src = t.detach()
    buf, _copied = host_bytes(src, pin=False)
    sync_devices([src])
    return tensor_hash(dtype_name(src.dtype, name), tuple(src.shape), numpy_bytes(buf), threads=threads)


CRASH_ENV = "REDLINE_EDITS_CRASH_AT"  # tests only: SIGKILL this process at the named point of a commit


def crash_point(name: str) -> None:
    """Kill this process with SIGKILL here when CRASH_ENV names this point (the SIGKILL-window tests)."""
    if os.environ.get(CRASH_ENV) == name:
        os.kill(os.getpid(), signal.SIGKILL)


def write_back(t: torch.Tensor, copy: HostCopy) -> None:
    """Put `copy`'s bytes into the live tensor (a same-dtype copy_: bit-exact, NaN payloads too)."""
    with untracked(), torch.no_grad():
        t.detach().copy_(copy.typed(t.device))
    sync_devices([t])


class PreEditContent:
    """Pre-edit content by hash: blob files, written ahead of the journal row, and the newest
    copies held in memory (up to `hold_bytes`) so reverting a recent edit reads no file."""

    def __init__(self, edits_dir: Path, hold_bytes: int, buffers: CopyBuffers | None = None):
        self.blobs = BlobFiles(edits_dir / "blobs", edits_dir / "tmp")
        for d in (self.blobs.blob_dir, self.blobs.tmp_dir):
            secure_mkdir(d)
        self.hold_bytes = hold_bytes
        self.buffers = buffers
        self._held: OrderedDict[str, HostCopy] = OrderedDict()
        self._held_bytes = 0
        self._lock = threading.Lock()

    def keep(self, copies: list[HostCopy]) -> None:
        """Make `copies` durable (blob written and fsynced, its directory too); they are hashed.

        Called before the journal row that needs them is written (write-ahead): a process killed
        after the row always leaves the blobs a revert reads. A blob already on disk (same
        content, same size) is not written again; reading it back verifies its hash.
        """
        fresh = [c for c in copies if not self._on_disk(c)]
        for copy in fresh:
            self.blobs.write(copy.digest, copy.dtype, copy.shape, numpy_bytes(copy.data), durable=True)
        if fresh:
            self.blobs.sync_dirs([c.digest for c in fresh])

    def hold(self, copies: list[HostCopy]) -> None:
        """Hold durable copies for quick reverts; a duplicate's buffer goes back to the pool."""
        with self._lock:
            for copy in copies:
                held = self._held.get(copy.digest)
                if held is None:
                    self._held[copy.digest] = copy
                    self._held_bytes += copy.data.nbytes
                elif held is not copy:
                    self.release([copy])
                self._held.move_to_end(copy.digest)
            self._evict()

    def release(self, copies: list[HostCopy]) -> None:
        """Copies no longer needed (a rolled-back edit's, once hashed): their buffers to the pool."""
        if self.buffers is not None:
            for copy in copies:
                self.buffers.give(copy.data)

    def _on_disk(self, copy: HostCopy) -> bool:
        try:
            size = len(blob_header(copy.digest, copy.dtype, copy.shape, copy.data.nbytes)) + copy.data.nbytes
            return self.blobs.path(copy.digest).stat().st_size == size
        except FileNotFoundError:
            return False

    def _evict(self) -> None:
        """Drop the oldest held copies until within the budget."""
        while self._held_bytes > self.hold_bytes and self._held:
            _digest, copy = self._held.popitem(last=False)
            self._held_bytes -= copy.data.nbytes
            self.release([copy])

    def close(self) -> None:
        with self._lock:
            self._held.clear()
            self._held_bytes = 0

    def fetch(self, change, edit_id: int) -> HostCopy:
        """The content `change.hash_before` of one tensor, verified; RevertFailed-worthy errors raise."""
        with self._lock:
            held = self._held.get(change.hash_before)
        if held is not None:
            return held
        buf = new_host_buffer(change.nbytes, pin=False)
        record = TensorRecord(change.name, change.hash_before, change.dtype, tuple(change.shape), change.nbytes)
        try:
            self.blobs.read(record, checkpoint_id=f"edit {edit_id} (pre-edit content)", into=numpy_bytes(buf))
        except CheckpointCorrupted as exc:
            raise LookupError(str(exc).replace("This checkpoint cannot be restored; restore another one.",
                                               "")) from None
        return HostCopy(change.name, change.dtype, tuple(change.shape), buf, change.hash_before)

    def collect(self, referenced: set[str]) -> int:
        """Delete blobs no live edit needs and crash leftovers (the owner does this on open)."""
        for entry in os.scandir(self.blobs.tmp_dir):
            if entry.name.startswith(TEMP_PREFIX):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
        return self.blobs.delete_unreferenced(referenced)
