"""The in-memory snapshot: one checkpoint's verified tensor bytes held in host memory.

CheckpointManager keeps one (see its docstring): restoring that checkpoint reads no disk,
and the next save proves unchanged tensors equal with a memcmp instead of hashing them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import torch

from engine.store.manifests import Manifest


@dataclass
class HeldTensor:
    """One tensor of the snapshot: verified bytes, their hash and (when known) their xxh3 checksum."""

    hash: str
    dtype: str
    shape: tuple[int, ...]
    buf: torch.Tensor
    xxh3: str | None = None


@dataclass
class Snapshot:
    """A checkpoint's state held in host memory (pinned on CUDA)."""

    checkpoint_id: str | None
    manifest: Manifest | None
    tensors: dict[str, HeldTensor]  # by the manifest's (first) tensor name
    pinned: bool = False
    by_hash: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.by_hash = {h.hash: h.buf for h in self.tensors.values()}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.by_hash.values())

    @classmethod
    def of(cls, manifest: Manifest, sources: dict[str, torch.Tensor], pinned: bool) -> Snapshot:
        """The snapshot of `manifest`, from verified bytes by hash."""
        held = {r.name: HeldTensor(r.hash, r.dtype, r.shape, sources[r.hash], r.xxh3) for r in manifest.tensors}
        return cls(manifest.id, manifest, held, pinned=pinned)


class Claims:
    """Hashes already handled by one save (equal tensors in one model are written once)."""

    def __init__(self):
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, digest: str) -> bool:
        with self._lock:
            if digest in self._seen:
                return False
            self._seen.add(digest)
            return True
