"""Tensor content for the journal: host copies made before a write, hashes, restores, and the
content-addressed blobs of pre-edit content in `<run_dir>/edits/blobs` (engine/store/blobs.py).

A blob is queued when an edit commits (named by the hash of the content before the edit) and
written by one writer thread, off the edit's path; its host copy stays held until it is on disk
(`flush()` waits for that). Reverting an old edit reads one file per tensor it touched and never
needs the model's history; the newest host copies stay held up to `hold_bytes`, so reverting a
recent edit reads no file. A process killed within moments of a commit may lose that edit's
blob: the revert then says the pre-edit content is missing and changes nothing.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import blake3
import torch

from engine.fsutil import TEMP_PREFIX, secure_mkdir
from engine.store.blobs import BlobFiles, tensor_hash, tensor_hasher
from engine.store.errors import CheckpointCorrupted
from engine.store.manifests import TensorRecord
from engine.store.tensors import (as_tensor, byte_view, copy_and_hash, dtype_name, host_bytes, new_host_buffer,
                                  numpy_bytes, sync_devices, untracked)

_BIG = 8 << 20  # hash tensors at least this large with several threads


@dataclass
class HostCopy:
    """The bytes of one tensor at one moment, on the host, with their content hash."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    data: torch.Tensor  # uint8, contiguous, host
    digest: str

    def typed(self, device: torch.device | None = None) -> torch.Tensor:
        t = as_tensor(self.data, self.dtype, self.shape)
        return t if device is None or device.type == "cpu" else t.to(device)


def copy_tensor(name: str, t: torch.Tensor) -> HostCopy:
    """A host copy of `t`'s bytes and their hash, in one pass over memory where it can."""
    src = t.detach()
    dtype, shape = dtype_name(src.dtype, name), tuple(src.shape)
    if src.device.type == "cpu" and src.is_contiguous():
        buf = new_host_buffer(src.nbytes, pin=False)
        hasher = tensor_hasher(dtype, shape, max_threads=blake3.blake3.AUTO if src.nbytes >= _BIG else 1)
        copy_and_hash(buf, byte_view(src), hasher)
        return HostCopy(name, dtype, shape, buf, hasher.hexdigest())
    buf, copied = host_bytes(src, pin=src.device.type == "cuda")
    sync_devices([src])
    if not copied:
        buf = buf.clone()
    return HostCopy(name, dtype, shape, buf, tensor_hash(dtype, shape, numpy_bytes(buf)))


def content_hash(name: str, t: torch.Tensor) -> str:
    """The content hash of a live tensor (as the store names it); copies only off-CPU tensors."""
    src = t.detach()
    buf, _copied = host_bytes(src, pin=False)
    sync_devices([src])
    return tensor_hash(dtype_name(src.dtype, name), tuple(src.shape), numpy_bytes(buf))


def write_back(t: torch.Tensor, copy: HostCopy) -> None:
    """Put `copy`'s bytes into the live tensor (a same-dtype copy_: bit-exact, NaN payloads too)."""
    with untracked(), torch.no_grad():
        t.detach().copy_(copy.typed(t.device))
    sync_devices([t])


class PreEditContent:
    """Pre-edit content by hash: held host copies (newest first kept) and blob files."""

    def __init__(self, edits_dir: Path, hold_bytes: int):
        self.blobs = BlobFiles(edits_dir / "blobs", edits_dir / "tmp")
        for d in (self.blobs.blob_dir, self.blobs.tmp_dir):
            secure_mkdir(d)
        self.hold_bytes = hold_bytes
        self._held: OrderedDict[str, HostCopy] = OrderedDict()
        self._held_bytes = 0
        self._pending: dict[str, HostCopy] = {}  # queued, not yet on disk: always held
        self._lock = threading.Lock()
        self._queue: queue.Queue = queue.Queue()
        self._writer: threading.Thread | None = None
        self.write_error: OSError | None = None

    def keep(self, copy: HostCopy) -> None:
        """Queue `copy` to be written as a blob (unless present) and hold it meanwhile."""
        nbytes = copy.data.nbytes
        with self._lock:
            if copy.digest not in self._held:
                self._held[copy.digest] = copy
                self._held_bytes += nbytes
            self._pending[copy.digest] = copy
        self._start_writer()
        self._queue.put(copy)

    def _start_writer(self) -> None:
        if self._writer is None or not self._writer.is_alive():
            self._writer = threading.Thread(target=self._write_blobs, name="redline-edit-blobs", daemon=True)
            self._writer.start()

    def _write_blobs(self) -> None:
        while True:
            copy = self._queue.get()
            try:
                if copy is None:
                    return
                if not self.blobs.present(copy.digest, copy.dtype, copy.shape, copy.data.nbytes):
                    self.blobs.write(copy.digest, copy.dtype, copy.shape, numpy_bytes(copy.data), durable=False)
            except OSError as exc:
                self.write_error = exc
            finally:
                if copy is not None:
                    with self._lock:
                        self._pending.pop(copy.digest, None)
                        self._evict()
                self._queue.task_done()

    def _evict(self) -> None:
        """Drop the oldest held copies already on disk until within the budget."""
        for digest in list(self._held):
            if self._held_bytes <= self.hold_bytes:
                return
            if digest not in self._pending:
                self._held_bytes -= self._held.pop(digest).data.nbytes

    def flush(self) -> None:
        """Wait until every queued blob is on disk; raise the writer's error, if it had one."""
        if self._writer is not None:
            self._queue.join()
        if self.write_error is not None:
            exc, self.write_error = self.write_error, None
            raise OSError(f"writing the pre-edit content of an edit failed: {exc}") from exc

    def close(self) -> None:
        if self._writer is not None and self._writer.is_alive():
            self._queue.put(None)
            self._writer.join()
        self._writer = None

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
