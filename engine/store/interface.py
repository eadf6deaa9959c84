"""What CheckpointManager needs from a checkpoint store: the storage seam.

`engine.store.store.CheckpointStore` (content-addressed blobs + JSON manifests in one
directory) is the default; another backend implements this Protocol and is passed as
``CheckpointManager(model, checkpoint_dir, store=...)``. Only the store touches its files.
"""

from __future__ import annotations

from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Protocol, runtime_checkable

from engine.store.blobs import BlobCheck
from engine.store.manifests import Manifest, TensorRecord


@runtime_checkable
class CheckpointStorage(Protocol):
    """Checkpoints as manifests naming content-hashed tensors; thread-safe per method."""

    root: Path  # where the checkpoints live (named in messages)

    @property
    def watch_path(self) -> Path:
        """The folder whose changes mean another process saved or deleted a checkpoint."""

    def saving(self) -> AbstractContextManager:
        """Held around one save (blob writes and commit): deletions wait, in any process."""

    def put_blob(self, digest: str, dtype: str, shape: tuple[int, ...], data, *, recheck: bool = False) -> BlobCheck:
        """Make the tensor stored under `digest` hold exactly `data`: reuse it only once its bytes are
        proven equal, else write (or rewrite a damaged one). Returns what was found: state "same",
        "absent" or "damaged" (with why). Raises CheckpointError on a full or read-only disk."""

    def commit(self, body: dict, new_blobs: Iterable[str] = ()) -> bool:
        """Make the checkpoint `body` (with its `new_blobs`) exist, all at once; False if its id is taken."""

    def list_ids(self) -> list[str]:
        """Ids of every checkpoint present, damaged ones included."""

    def read_manifest(self, checkpoint_id: str) -> Manifest:
        """The verified manifest (CheckpointNotFound, CheckpointCorrupted)."""

    def read_blob(self, rec: TensorRecord, *, checkpoint_id: str, into=None, exact: bool = False) -> None:
        """Read `rec`'s bytes into `into` (or only check them), verified against rec.xxh3 when present,
        else (or with `exact`) rec.hash; CheckpointCorrupted names the checkpoint and tensor."""

    def delete(self, checkpoint_id: str) -> bool:
        """Remove a checkpoint and whatever only it used; False if it does not exist."""

    def discard_unreferenced(self) -> int:
        """After a failed save: drop what no checkpoint references (when no save runs); bytes freed."""

    def disk_usage(self) -> int:
        """Bytes the store occupies."""
