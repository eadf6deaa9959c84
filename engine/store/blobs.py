"""Content-addressed tensor blobs: one standalone safetensors file per distinct tensor.

``<blob_dir>/ab/<blake3>.safetensors`` holds one tensor under the key "tensor"; the name is
the hash of its dtype, shape and raw bytes, so equal tensors share one file and a file is
never changed once renamed in. Its header is deterministic, so a reader checks the whole
header byte for byte and the payload against the hash: `BlobFiles.read` is the one place
that reads a blob, and it always verifies.
"""

from __future__ import annotations

import contextlib
import functools
import os
import struct
from pathlib import Path

import blake3

from engine.fsutil import TEMP_PREFIX, atomic_write, fsync_dir, secure_mkdir
from engine.store.errors import CheckpointCorrupted
from engine.store.manifests import TensorRecord, canonical_json

BLOB_KEY = "tensor"
_BIG_TENSOR = 8 << 20  # hash tensors at least this large with several threads
_READ_CHUNK = 1 << 20  # reading into a buffer: hash each chunk while it is in cache
_VERIFY_CHUNK = 16 << 20  # verifying only: bounded scratch memory, multithreaded hash


def tensor_hash(dtype: str, shape: tuple[int, ...], data) -> str:
    """blake3 over dtype, shape and the raw bytes: equal hash <=> identical tensor."""
    nbytes = memoryview(data).nbytes
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if nbytes >= _BIG_TENSOR else 1)
    h.update(_hash_prefix(dtype, shape))
    h.update(data)
    return h.hexdigest()


def tensor_hasher(dtype: str, shape: tuple[int, ...], max_threads: int = 1):
    """An incremental tensor_hash: update() it with the raw bytes in order, then hexdigest()."""
    h = blake3.blake3(max_threads=max_threads)
    h.update(_hash_prefix(dtype, shape))
    return h


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


@functools.lru_cache(maxsize=4096)
def _blob_size(dtype: str, shape: tuple[int, ...], nbytes: int) -> int:
    """A blob file's exact size; its header's length does not depend on which digest it names."""
    return len(blob_header("0" * 64, dtype, shape, nbytes)) + nbytes


class BlobFiles:
    """The blob files of one checkpoint directory; temp files are written in `tmp_dir`."""

    def __init__(self, blob_dir: Path, tmp_dir: Path):
        self.blob_dir = blob_dir
        self.tmp_dir = tmp_dir

    def path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / f"{digest}.safetensors"

    def present(self, digest: str, dtype: str, shape, nbytes: int) -> bool:
        """True if the blob exists with the exact expected size (a truncated one is rewritten)."""
        try:
            size = os.stat(self.path(digest)).st_size
        except FileNotFoundError:
            return False
        return size == _blob_size(dtype, tuple(shape), nbytes)

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

    def read(self, rec: TensorRecord, *, checkpoint_id: str, into=None) -> None:
        """Read the blob of `rec`, verifying header, size and hash; raise CheckpointCorrupted if bad.

        With `into` (a writable buffer of rec.nbytes) the bytes land there; without, they are
        only hashed, through a bounded scratch buffer (verification of a checkpoint on disk).
        """
        path = self.path(rec.hash)
        try:
            fh = open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise CheckpointCorrupted(
                f"checkpoint {checkpoint_id}: the file holding tensor {rec.name!r} is missing "
                f"({path}). This checkpoint cannot be restored; restore another one."
            ) from None
        if into is not None:
            out, h, chunk = memoryview(into).cast("B"), tensor_hasher(rec.dtype, rec.shape), _READ_CHUNK
        else:
            chunk = min(_VERIFY_CHUNK, max(rec.nbytes, 1))
            out = memoryview(bytearray(chunk))
            h = tensor_hasher(rec.dtype, rec.shape, max_threads=blake3.blake3.AUTO)
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
        if h.hexdigest() != rec.hash:
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
