"""The content-addressed checkpoint store: tensor blobs, JSON manifests, one lock.

Layout of a checkpoint directory::

    <dir>/blobs/ab/<blake3>.safetensors   one tensor per file, a standard safetensors file,
                                          named by the hash of its dtype, shape and raw bytes
    <dir>/manifests/<id>.json             one checkpoint: tensor names -> hashes, metadata
    <dir>/tmp/                            files being written
    <dir>/lock                            flock: saves hold it shared, deletion and gc hold it exclusive

The manifest is the commit point: blobs are written (temp, fsync, rename) first and the
manifest last, so a crash at any instant leaves a whole checkpoint or none. The registry is
the manifest directory listing itself; no single file's damage can forget other checkpoints.
Each manifest carries a checksum of its own body, so any damage to it is detected.

A crash between the blob writes and the manifest leaves blobs no manifest references (and
temp files). Opening a store collects them (`collect_garbage`) when it can take the lock
exclusively: a save holds it shared from its first blob write to its commit, so whatever
the exclusive holder finds unreferenced is no save's, in any process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from engine.fsutil import FILE_MODE, atomic_write, fsync_dir, secure_mkdir
from engine.store.blobs import BlobCheck, BlobFiles
from engine.store.errors import CheckpointCorrupted, CheckpointError, CheckpointNotFound
from engine.store.manifests import ID_RE, Manifest, TensorRecord, check_id, manifest_bytes, parse_manifest
from engine.store.workers import io_pool

_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGE = ("the disk is full while writing a checkpoint; nothing was committed. Free "
                 "space (delete old checkpoints with delete_checkpoint) and save again.")


@dataclass
class Garbage:
    """What one garbage collection removed (or, in a dry run, would remove): (path, bytes) pairs."""

    dry_run: bool
    blobs: list[tuple[Path, int]] = field(default_factory=list)  # tensor files no manifest references
    leftovers: list[tuple[Path, int]] = field(default_factory=list)  # temp files of crashed saves
    skipped: str = ""  # why some or all of it was not collected

    @property
    def freed_bytes(self) -> int:
        return sum(size for _path, size in (*self.blobs, *self.leftovers))


def _listing(directory: Path) -> list[tuple[Path, int]]:
    out = []
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(directory):
            with contextlib.suppress(FileNotFoundError):
                if entry.is_file(follow_symlinks=False):
                    out.append((Path(entry.path), entry.stat(follow_symlinks=False).st_size))
    return out


class CheckpointStore:
    """Files of one checkpoint directory (a CheckpointStorage). Knows nothing of torch: tensors arrive as bytes."""

    def __init__(self, root: str | os.PathLike, durable: bool = True, readonly: bool = False):
        """`readonly`: only read; nothing is ever created, moved or removed under `root`
        (no lock file, no tmp/, no garbage collection), and every change raises CheckpointError."""
        self.durable = durable  # fsync files and directories (survive power loss, not just crashes)
        self.readonly = readonly
        self.root = Path(root).expanduser().absolute()
        self.blob_dir = self.root / "blobs"
        self.manifest_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"
        self.lock_path = self.root / "lock"
        self.blobs = BlobFiles(self.blob_dir, self.tmp_dir, readonly=readonly)
        self._manifest_cache: dict[str, tuple[tuple[int, int, int], Manifest]] = {}
        if not readonly:
            self.ensure_dirs()
            self.clean_leftovers()

    @property
    def watch_path(self) -> Path:
        """A manifest appears or disappears here whenever any process saves or deletes a checkpoint."""
        return self.manifest_dir

    def ensure_dirs(self) -> None:
        """(Re)create the directory tree: someone may delete the run directory while we run."""
        self._refuse_if_readonly()
        for d in (self.root, self.blob_dir, self.manifest_dir, self.tmp_dir):
            if not d.is_dir():
                secure_mkdir(d)

    # -- locking

    @contextlib.contextmanager
    def lock(self, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """flock on <dir>/lock; yields False if non-blocking and someone else holds it.

        A read-only store creates nothing: it locks an existing lock file (flock needs no write access)
        and, where there is none, no writer has ever locked this store, so there is nothing to wait for."""
        if self.readonly:
            try:
                fd = os.open(self.lock_path, os.O_RDONLY)
            except FileNotFoundError:
                yield True
                return
        else:
            fd = self._open_lock_file()
        try:
            flags = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
            try:
                fcntl.flock(fd, flags if blocking else flags | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield True
        finally:
            os.close(fd)  # closing releases the flock

    def _open_lock_file(self) -> int:
        with contextlib.suppress(OSError):  # a read-only tree is handled below
            self.ensure_dirs()
        try:
            return os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:  # a read-only directory: readers still lock (flock needs no write access)
            if exc.errno not in _UNWRITABLE:
                raise
            try:
                return os.open(self.lock_path, os.O_RDONLY)
            except FileNotFoundError:
                raise self.unwritable(exc) from None

    def saving(self):
        """Held around a save: a deletion (in any process) waits, so it never removes a blob the save reuses."""
        self._refuse_if_readonly()
        return self.lock(exclusive=False)

    def _refuse_if_readonly(self) -> None:
        if self.readonly:
            raise CheckpointError(f"the checkpoint directory {self.root} was opened read-only; nothing is "
                                  "written there. Open it without readonly to save or delete checkpoints.")

    def unwritable(self, exc: OSError) -> CheckpointError:
        return CheckpointError(
            f"cannot write to the checkpoint directory {self.root}: {exc.strerror or exc}; nothing "
            "was changed there. Make it writable (permissions, a read-write mount) or choose another run directory."
        )

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        """A directory that refuses or a full disk becomes a CheckpointError saying what to do."""
        try:
            yield
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise self.unwritable(exc) from None
            if exc.errno in _FULL:
                raise CheckpointError(_FULL_MESSAGE) from exc
            raise

    # -- blobs

    def put_blob(self, digest: str, dtype: str, shape, data, *, recheck: bool = False) -> BlobCheck:
        """Make blob `digest` hold exactly `data`; returns what was there before.

        "same": the file was proven to hold these bytes (BlobFiles.check) and was reused;
        "absent": it was written; "damaged": it was rewritten from `data` (a repair; `why`
        says what was wrong). `recheck` re-reads the file even if this process proved it.
        """
        self._refuse_if_readonly()
        found = self.blobs.check(digest, dtype, shape, data, recheck=recheck)
        if found.state != "same":
            with self._writing():
                self.blobs.write(digest, dtype, shape, data, durable=self.durable)
        return found

    def has_blob(self, digest: str, dtype: str, shape, nbytes: int) -> bool:
        """Whether blob `digest` is stored and proven whole by re-hashing it (BlobFiles.present);
        for callers without the bytes in memory (put_blob compares instead)."""
        return self.blobs.present(digest, dtype, shape, nbytes)

    def write_blob(self, digest: str, dtype: str, shape, data) -> None:
        self._refuse_if_readonly()
        with self._writing():
            self.blobs.write(digest, dtype, shape, data, durable=self.durable)

    def read_blob(self, rec: TensorRecord, *, checkpoint_id: str, into=None, exact: bool = False) -> None:
        """Read and verify one tensor's file (into `into`, or only verify); see BlobFiles.read."""
        self.blobs.read(rec, checkpoint_id=checkpoint_id, into=into, exact=exact)

    # -- manifests

    def manifest_path(self, checkpoint_id: str) -> Path:
        return self.manifest_dir / f"{check_id(checkpoint_id)}.json"

    def commit(self, body: dict, new_blobs: Iterable[str] = ()) -> bool:
        """Make the blobs written for this save durable, then write its manifest (see write_manifest)."""
        new_blobs = list(new_blobs)
        if new_blobs and self.durable:
            self.blobs.sync_dirs(new_blobs, io_pool())
        return self.write_manifest(body)

    def write_manifest(self, body: dict) -> bool:
        """Commit a checkpoint: the manifest appears atomically, never replacing another.

        Returns False (nothing written) if a checkpoint of that id already exists.
        """
        self._refuse_if_readonly()
        with self._writing():
            return atomic_write(self.manifest_path(body["id"]), manifest_bytes(body), fsync=self.durable,
                                temp_dir=self.tmp_dir, overwrite=False)

    def list_ids(self) -> list[str]:
        """Ids of every manifest file present (damaged or not)."""
        out = []
        if not self.manifest_dir.is_dir():
            return out  # deleted under us: no checkpoints (the next save recreates the tree)
        for entry in os.scandir(self.manifest_dir):
            stem = entry.name[:-5] if entry.name.endswith(".json") else ""
            if ID_RE.fullmatch(stem):
                out.append(stem)
        return out

    def read_manifest(self, checkpoint_id: str) -> Manifest:
        """Parse and verify one manifest (cached by mtime, size, inode)."""
        path = self.manifest_path(checkpoint_id)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            self._manifest_cache.pop(checkpoint_id, None)
            raise CheckpointNotFound(
                f"no checkpoint {checkpoint_id} in {self.root}; take an id from list_checkpoints()"
            ) from None
        key = (st.st_mtime_ns, st.st_size, st.st_ino)
        cached = self._manifest_cache.get(checkpoint_id)
        if cached and cached[0] == key:
            return cached[1]
        manifest = parse_manifest(checkpoint_id, path.read_bytes(), path)
        self._manifest_cache[checkpoint_id] = (key, manifest)
        return manifest

    # -- deletion and garbage collection

    def delete(self, checkpoint_id: str) -> bool:
        """Delete a checkpoint and the blobs nothing else uses; False if it does not exist."""
        self._refuse_if_readonly()
        with self.lock(exclusive=True):
            if not self._unlink_manifest(checkpoint_id):
                return False
            self._collect(dry_run=False)
        return True

    def _unlink_manifest(self, checkpoint_id: str) -> bool:
        try:
            os.unlink(self.manifest_path(checkpoint_id))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise self.unwritable(exc) from None
            raise
        self._manifest_cache.pop(checkpoint_id, None)
        fsync_dir(self.manifest_dir)
        return True

    def collect_garbage(self, dry_run: bool = False, wait: bool = True) -> Garbage:
        """Remove blobs no manifest references and crash leftovers in tmp/ (the one gc entry point).

        Takes the exclusive lock, so no save runs anywhere meanwhile: a blob a save in another
        process has written but not yet committed is never taken for garbage. With
        ``wait=False`` and a save running, nothing is done (``skipped`` says so). ``dry_run``
        lists what would go and removes nothing. While any manifest is damaged no blob is
        removed: which files it needs cannot be known, and it may yet be repaired.
        """
        if not dry_run:
            self._refuse_if_readonly()
        with self.lock(exclusive=True, blocking=wait) as got:
            if not got:
                return Garbage(dry_run=dry_run, skipped="a save is in progress; nothing was collected")
            return self._collect(dry_run)

    def _collect(self, dry_run: bool) -> Garbage:
        """collect_garbage's work; the caller holds the exclusive lock."""
        garbage = Garbage(dry_run=dry_run, leftovers=_listing(self.tmp_dir))
        referenced = self.referenced_blobs()
        if referenced is None:
            garbage.skipped = "a manifest is damaged; no tensor file was removed (delete or repair it first)"
        else:
            garbage.blobs = self.blobs.unreferenced(referenced)
        if not dry_run:
            for path, _size in (*garbage.leftovers, *garbage.blobs):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(path)
        return garbage

    def referenced_blobs(self) -> set[str] | None:
        """Hashes every manifest names; None when a manifest is damaged (its needs are unknown)."""
        referenced: set[str] = set()
        for cid in self.list_ids():
            try:
                referenced.update(t.hash for t in self.read_manifest(cid).tensors)
            except CheckpointNotFound:
                continue
            except CheckpointCorrupted:
                return None
        return referenced

    def clean_leftovers(self) -> int:
        """On open: collect crash leftovers (temp files, unreferenced blobs) unless a save runs anywhere."""
        return self.collect_garbage(wait=False).freed_bytes

    def discard_unreferenced(self) -> int:
        """After a failed save: delete tensor files no manifest names, unless a save runs anywhere."""
        if self.readonly:
            return 0
        try:
            return self.collect_garbage(wait=False).freed_bytes
        except (CheckpointError, OSError):
            return 0

    def disk_usage(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total
