"""The hash of what a committed edit left in a tensor, taken by the writer thread, exactly.

The edit returns before its post-edit content is hashed (hashing is the slow part), so the model
may be written again before the writer gets to it. Each committed edit leaves one slot per
tensor it touched, holding the tensor's version counter at the end of the edit:

- A later edit that writes the tensor copies it first (copy-on-write, before the write runs):
  that copy IS the earlier edit's post-edit content, so the copy-on-write hands it to the
  slot (`before_write`) and the writer hashes the copy. Nothing waits, nothing is copied twice.
- The writer hashes the live tensor under the same lock the hand-over takes, so a later edit
  never writes a tensor the writer is reading.
- A write outside any edit (an optimizer step, an in-place op on the parameter) bumps the
  tensor's version counter: the writer then records the post-edit hash as unknown (None), so
  a revert of that edit is refused as "changed outside the journal", as it would be after
  such a write anyway. Writes the version counter does not see (through ``.data``, numpy,
  another thread) are not detected in the milliseconds before the hash; `journal.flush()` (or
  `edit(..., durable=True)`) before writing the model outside an edit closes that window.
"""

from __future__ import annotations

import threading

import torch

from engine.edits.content import HostCopy, content_hash, hash_copy


class AfterSlot:
    """The post-edit content of one tensor of one committed edit, until the writer hashed it."""

    __slots__ = ("index", "name", "tensor", "version", "copy", "changed", "digest")

    def __init__(self, index: int, name: str, tensor: torch.Tensor):
        self.index, self.name, self.tensor = index, name, tensor
        self.version = tensor._version
        self.copy: HostCopy | None = None  # handed over by a later edit's copy-on-write
        self.changed = False  # written outside an edit before it was hashed
        self.digest: str | None = None


class PostEditHashes:
    """The slots still waiting for the writer, by tensor index; see the module docstring."""

    def __init__(self):
        self._lock = threading.Lock()
        self._pending: dict[int, AfterSlot] = {}

    def expect(self, index: int, name: str, tensor: torch.Tensor) -> AfterSlot:
        """At the end of a committed edit (the editing thread): the slot the writer resolves."""
        slot = AfterSlot(index, name, tensor)
        with self._lock:
            self._pending[index] = slot
        return slot

    def before_write(self, index: int, copy: HostCopy) -> None:
        """A later edit copied tensor `index` before writing it: hand the copy to a waiting slot."""
        with self._lock:
            slot = self._pending.pop(index, None)
            if slot is not None:
                if slot.tensor._version == slot.version:
                    slot.copy = copy
                else:
                    slot.changed = True

    def resolve(self, slot: AfterSlot) -> str | None:
        """(The writer) the post-edit hash of `slot`, or None when it was overwritten unseen."""
        with self._lock:
            if self._pending.get(slot.index) is slot:
                del self._pending[slot.index]
                if slot.tensor._version != slot.version:
                    slot.changed = True
                else:
                    digest = content_hash(slot.name, slot.tensor, threads=1)
                    if slot.tensor._version != slot.version:
                        slot.changed = True
                    else:
                        slot.digest = digest
        if slot.copy is not None and slot.digest is None:
            slot.digest = hash_copy(slot.copy)
        return None if slot.changed else slot.digest

    def clear(self) -> None:
        with self._lock:
            self._pending.clear()
