"""Content-addressed tensor blobs: one standalone safetensors file per distinct tensor.

``<blob_dir>/ab/<blake3>.safetensors`` holds one tensor under the key "tensor"; the name is
the hash of its dtype, shape and raw bytes, so equal tensors share one file and a file is
never changed once renamed in. Its header is deterministic, so a reader checks the whole
header byte for byte and the payload against the hash: `BlobFiles.read` is the one place
that reads a blob, and it always verifies (restores with the manifest's fast xxh3 checksum
when it has one: damage detection need not be cryptographic, as whoever can rewrite a blob
can rewrite its manifest; `exact=True` re-hashes with blake3).

Reuse is proven, never assumed (`BlobFiles.check`): a save reuses a blob that is already
on disk only after comparing the file's bytes with the tensor's bytes it holds in memory
(exact, and cheaper than hashing: one read from the page cache and a memcmp). A proof is
remembered with the file's inode, size, mtime and ctime, so later saves in this process
pay one stat per reused blob: any write, truncation or replacement through the kernel
changes the ctime, which no process can set back. Not covered by the remembered proof:
damage below the file system (media bit rot) after the proof, in this process's lifetime;
a restore from disk still detects it and names the tensor, and
CheckpointManager.check_and_repair re-reads every file. Proofs of files whose ctime is
within _RACY_NS of the proof are not remembered (a write in the same clock tick could
leave the ctime unchanged), as git treats "racily clean" index entries.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import blake3
import xxhash

from engine.fsutil import TEMP_PREFIX, atomic_write, fsync_dir, secure_mkdir
from engine.store.errors import CheckpointCorrupted
from engine.store.manifests import TensorRecord, canonical_json

BLOB_KEY = "tensor"
_BIG_TENSOR = 8 << 20  # hash tensors at least this large with several threads
_READ_CHUNK = 1 << 20  # reading into a buffer: hash each chunk while it is in cache
_VERIFY_CHUNK = 16 << 20  # verifying only: bounded scratch memory, multithreaded hash
_RACY_NS = 200_000_000  # a proof is remembered only for files last changed longer ago than this

_libc = ctypes.CDLL(None)
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


def memcmp(a: int, b: int, nbytes: int) -> int:
    """libc memcmp of two addresses (releases the GIL)."""
    return _libc.memcmp(a, b, nbytes)


def tensor_hash(dtype: str, shape: tuple[int, ...], data, threads: int | None = None) -> str:
    """blake3 over dtype, shape and the raw bytes: equal hash <=> identical tensor.

    `threads`: the hasher's threads; None uses several for a large tensor (a background
    hasher passes 1, leaving the other cores to the thread it works for)."""
    nbytes = memoryview(data).nbytes
    if threads is None:
        threads = blake3.blake3.AUTO if nbytes >= _BIG_TENSOR else 1
    h = blake3.blake3(max_threads=threads)
    h.update(_hash_prefix(dtype, shape))
    h.update(data)
    return h.hexdigest()


def tensor_hasher(dtype: str, shape: tuple[int, ...], max_threads: int = 1):
    """An incremental tensor_hash: update() it with the raw bytes in order, then hexdigest()."""
    h = blake3.blake3(max_threads=max_threads)
    h.update(_hash_prefix(dtype, shape))
    return h


class TensorDigests:
    """The blake3 content address and the xxh3-128 checksum of one tensor, fed its bytes in order."""

    def __init__(self, dtype: str, shape: tuple[int, ...], max_threads: int = 1):
        self._address = tensor_hasher(dtype, shape, max_threads)
        self._checksum = checksum_hasher(dtype, shape)

    def update(self, data) -> None:
        self._address.update(data)
        self._checksum.update(data)

    def hexdigests(self) -> tuple[str, str]:
        return self._address.hexdigest(), self._checksum.hexdigest()


def tensor_digests(dtype: str, shape: tuple[int, ...], data) -> tuple[str, str]:
    """(tensor_hash, tensor_checksum) of one tensor's bytes."""
    return tensor_hash(dtype, shape, data), tensor_checksum(dtype, shape, data)


def checksum_hasher(dtype: str, shape: tuple[int, ...]):
    """An incremental xxh3-128 over the same prefix and bytes as the content hash."""
    h = xxhash.xxh3_128()
    h.update(_hash_prefix(dtype, shape))
    return h


def tensor_checksum(dtype: str, shape: tuple[int, ...], data) -> str:
    h = checksum_hasher(dtype, shape)
    h.update(data)
    return h.hexdigest()


def _hash_prefix(dtype: str, shape) -> bytes:
    return f"redline-tensor-v1|{dtype}|{','.join(map(str, shape))}|".encode("ascii")


def blob_header(digest: str, dtype: str, shape, nbytes: int) -> bytes:
    """The safetensors header (length prefix included) of the blob of one tensor."""
    header = canonical_json(
        {
            "__metadata__": {"blake3": digest, "format": "pt"},
            BLOB_KEY: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]},
        }
    )
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header


@dataclass(frozen=True)
class BlobCheck:
    """What `BlobFiles.check` found: "same" (the file holds exactly the bytes), "absent", or
    "damaged" (with why)."""

    state: str
    why: str = ""


SAME, ABSENT = BlobCheck("same"), BlobCheck("absent")


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _address(view: memoryview) -> int | None:
    """The address of a writable buffer's first byte; None for a read-only one."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(view))
    except TypeError:
        return None


class BlobFiles:
    """The blob files of one checkpoint directory; temp files are written in `tmp_dir`.

    `readonly`: never move a damaged file aside (a read-only engine writes nothing).
    """

    def __init__(self, blob_dir: Path, tmp_dir: Path, readonly: bool = False):
        self.blob_dir = blob_dir
        self.tmp_dir = tmp_dir
        self.readonly = readonly
        self._proven: dict[str, tuple[int, int, int, int, int]] = {}  # digest -> stat key when proven

    def path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / f"{digest}.safetensors"

    def check(self, digest: str, dtype: str, shape, data, *, recheck: bool = False) -> BlobCheck:
        """Whether blob `digest` holds exactly `data` (its header too); see the module docstring.

        A proof remembered for an unchanged file is trusted unless `recheck`.
        """
        try:
            key = _stat_key(os.stat(self.path(digest)))
        except FileNotFoundError:
            self._proven.pop(digest, None)
            return ABSENT
        if not recheck and self._proven.get(digest) == key:
            return SAME
        started = time.time_ns()
        found, key = self._compare(digest, dtype, shape, data)
        if found is SAME and started - key[4] > _RACY_NS:
            self._proven[digest] = key
        else:
            self._proven.pop(digest, None)
        return found

    def present(self, digest: str, dtype: str, shape, nbytes: int) -> bool:
        """Whether blob `digest` exists whole with bytes that hash to `digest`, for callers that
        do not hold the bytes to compare (re-hashed each time; a damaged file is moved aside)."""
        rec = TensorRecord("(blob)", digest, dtype, tuple(shape), nbytes)
        try:
            self.read(rec, checkpoint_id="(reuse check)", exact=True)
        except CheckpointCorrupted:
            return False
        return True

    def _compare(self, digest: str, dtype: str, shape, data) -> tuple[BlobCheck, tuple]:
        view = memoryview(data).cast("B")
        header = blob_header(digest, dtype, shape, view.nbytes)
        try:
            fh = open(self.path(digest), "rb", buffering=0)
        except FileNotFoundError:
            return ABSENT, ()
        with fh:
            key = _stat_key(os.fstat(fh.fileno()))
            if key[2] != len(header) + view.nbytes:
                return BlobCheck("damaged", f"it has {key[2]} bytes, expected {len(header) + view.nbytes}"), key
            if fh.read(len(header)) != header:
                return BlobCheck("damaged", "its header is damaged"), key
            scratch = memoryview(bytearray(min(_READ_CHUNK, max(view.nbytes, 1))))
            ours, theirs = _address(view) if view.nbytes else None, _address(scratch)
            pos = 0
            while pos < view.nbytes:
                n = fh.readinto(scratch[: min(len(scratch), view.nbytes - pos)])
                if not n:
                    return BlobCheck("damaged", "it is truncated"), key
                equal = (memcmp(theirs, ours + pos, n) == 0 if ours is not None
                         else scratch[:n] == view[pos : pos + n])
                if not equal:
                    return BlobCheck("damaged", "its bytes differ from the tensor it should hold"), key
                pos += n
        return SAME, key

    def write(self, digest: str, dtype: str, shape, data, *, durable: bool) -> None:
        """Write one tensor file (temp, fsync if durable, rename); its directory is synced by sync_dirs."""
        view = memoryview(data).cast("B")
        target = self.path(digest)
        secure_mkdir(target.parent)
        atomic_write(target, (blob_header(digest, dtype, shape, view.nbytes), view), fsync=durable,
                     temp_dir=self.tmp_dir, sync_dir=False)

    def sync_dirs(self, digests, pool=None) -> None:
        """Make the renames of new blobs durable (before the manifest that names them)."""
        dirs = [self.blob_dir / sub for sub in {d[:2] for d in digests}] + [self.blob_dir]
        for _ in (pool.map(fsync_dir, dirs) if pool else map(fsync_dir, dirs)):
            pass

    def read(self, rec: TensorRecord, *, checkpoint_id: str, into=None, exact: bool = False) -> None:
        """Read the blob of `rec`, verifying header, size and checksum; raise CheckpointCorrupted if bad.

        With `into` (a writable buffer of rec.nbytes) the bytes land there; without, they are
        only hashed, through a bounded scratch buffer (verification of a checkpoint on disk).
        The payload is checked against rec.xxh3 when the manifest has it, else (or with
        `exact`) against the blake3 content address.
        """
        fast = rec.xxh3 is not None and not exact
        path = self.path(rec.hash)
        try:
            fh = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise CheckpointCorrupted(
                f"checkpoint {checkpoint_id}: the file holding tensor {rec.name!r} is missing "
                f"({path}). This checkpoint cannot be restored; restore another one."
            ) from None
        if into is not None:
            out, chunk = memoryview(into).cast("B"), _READ_CHUNK
            h = checksum_hasher(rec.dtype, rec.shape) if fast else tensor_hasher(rec.dtype, rec.shape)
        else:
            chunk = min(_VERIFY_CHUNK, max(rec.nbytes, 1))
            out = memoryview(bytearray(chunk))
            h = (checksum_hasher(rec.dtype, rec.shape) if fast
                 else tensor_hasher(rec.dtype, rec.shape, max_threads=blake3.blake3.AUTO))
        with fh:
            fh.seek(self._check_header(fh, rec, path, checkpoint_id))
            got = 0
            while got < rec.nbytes:
                n_wanted = min(chunk, rec.nbytes - got)
                dest = out[got : got + n_wanted] if into is not None else out[:n_wanted]
                n = fh.readinto(dest)
                if not n:
                    break
                h.update(dest[:n])
                got += n
        if got != rec.nbytes:
            raise self._damaged(rec, path, checkpoint_id, "it is truncated")
        if h.hexdigest() != (rec.xxh3 if fast else rec.hash):
            raise self._damaged(rec, path, checkpoint_id, "its bytes do not match their hash")

    def _check_header(self, fh, rec: TensorRecord, path: Path, checkpoint_id: str) -> int:
        """Headers are deterministic: the file must start with exactly the one we would write."""
        expected = blob_header(rec.hash, rec.dtype, rec.shape, rec.nbytes)
        size = os.fstat(fh.fileno()).st_size
        if size < len(expected) + rec.nbytes:
            raise self._damaged(rec, path, checkpoint_id, f"it is truncated ({size} bytes, "
                                f"expected {len(expected) + rec.nbytes})")
        if size > len(expected) + rec.nbytes:
            raise self._damaged(rec, path, checkpoint_id, f"it has {size} bytes, expected "
                                f"{len(expected) + rec.nbytes}")
        if fh.read(len(expected)) != expected:
            raise self._damaged(rec, path, checkpoint_id, "its header is damaged")
        return len(expected)

    def quarantine(self, path: Path) -> None:
        """Move a damaged blob out of the way, so the next save of that content rewrites it.

        Blobs are immutable once renamed in, so a failed check is real damage, never a
        save in progress; a checkpoint referencing it was unusable already.
        """
        self._proven.pop(path.name.removesuffix(".safetensors"), None)
        if self.readonly:
            return
        with contextlib.suppress(OSError):
            os.replace(path, self.tmp_dir / f"{TEMP_PREFIX}damaged-{path.name}")

    def _damaged(self, rec: TensorRecord, path: Path, checkpoint_id: str, why: str) -> CheckpointCorrupted:
        self.quarantine(path)
        return CheckpointCorrupted(
            f"checkpoint {checkpoint_id}: the file holding tensor {rec.name!r} ({path}) is "
            f"damaged: {why}. The model was not changed. Restore another checkpoint; other "
            "checkpoints that share this tensor are damaged too until a save of a model holding "
            "these values writes the file again."
        )

    def unreferenced(self, referenced: set[str]) -> list[tuple[Path, int]]:
        """(path, bytes) of every file under the blob folder whose hash is not in `referenced`."""
        out = []
        with contextlib.suppress(FileNotFoundError):
            for sub in os.scandir(self.blob_dir):
                if not sub.is_dir():
                    continue
                for entry in os.scandir(sub.path):
                    if entry.name.removesuffix(".safetensors") in referenced:
                        continue
                    with contextlib.suppress(FileNotFoundError):
                        out.append((Path(entry.path), entry.stat(follow_symlinks=False).st_size))
        return out

    def delete_unreferenced(self, referenced: set[str]) -> int:
        """Delete every blob whose hash is not in `referenced`; returns bytes freed."""
        freed = 0
        for path, size in self.unreferenced(referenced):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
                freed += size
        return freed
