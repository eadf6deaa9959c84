"""The on-disk checkpoint store: content-addressed tensor blobs, JSON manifests, one lock.

Layout of a checkpoint directory::

    <dir>/blobs/ab/<blake3>.safetensors   one tensor per file, a standard safetensors file,
                                          named by the hash of its dtype, shape and raw bytes
    <dir>/manifests/<id>.json             one checkpoint: tensor names -> hashes, metadata
    <dir>/tmp/                            files being written (crash leftovers removed on open)
    <dir>/lock                            flock: saves hold it shared, deletion holds it exclusive

The manifest is the commit point: blobs are written (temp, fsync, rename) first and the
manifest last, so a crash at any instant leaves a whole checkpoint or none. The registry is
the manifest directory listing itself; no single file's damage can forget other checkpoints.
Each manifest carries a checksum of its own body, so any damage to it is detected.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import math
import os
import re
import secrets
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import blake3

from engine.fsutil import FILE_MODE, TEMP_PREFIX, fsync_dir, secure_mkdir

FORMAT = "redline.checkpoint"
VERSION = 1
MAX_METADATA_BYTES = 1 << 20
ID_RE = re.compile(r"checkpoint_[0-9]{8}_[0-9]{6}_[0-9a-f]{8}", re.ASCII)
HASH_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
BLOB_KEY = "tensor"
ITEMSIZE = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1,
    "U16": 2, "U32": 4, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1, "C64": 8,
}  # fmt: skip  (bytes per element of each safetensors dtype name)
_BIG_TENSOR = 8 << 20  # hash tensors at least this large with several threads
_READ_CHUNK = 1 << 20


class CheckpointError(Exception):
    """Base of every checkpoint failure; the message says what happened and what to do."""


class InvalidCheckpointId(CheckpointError, ValueError):
    """Not a checkpoint id of this directory (malformed, or no such checkpoint)."""


class CheckpointNotFound(InvalidCheckpointId):
    """A well-formed id with no checkpoint of that name in this directory."""


class CheckpointCorrupted(CheckpointError):
    """A manifest or tensor file is damaged: that checkpoint cannot be used."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's tensors (names, shapes, dtypes, ties) do not fit the model."""


class MetadataTooLarge(CheckpointError, ValueError):
    """Checkpoint metadata is larger than MAX_METADATA_BYTES once serialised."""


@dataclass(frozen=True)
class TensorRecord:
    """One stored tensor of a manifest; `aliases` are other names for the same storage."""

    name: str
    hash: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    aliases: tuple[str, ...] = ()

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "hash": self.hash,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "aliases": list(self.aliases),
        }


@dataclass(frozen=True)
class Manifest:
    """A parsed, checksum-verified manifest."""

    id: str
    created: str
    timestamp: float
    metadata: dict
    model_class: str
    model_type: str
    tensors: tuple[TensorRecord, ...]
    size_bytes: int
    new_bytes: int

    def by_name(self) -> dict[str, TensorRecord]:
        """Every name (aliases included) -> its record."""
        return {n: rec for rec in self.tensors for n in rec.names}


# ---------------------------------------------------------------- ids


def check_id(checkpoint_id: object) -> str:
    """Return `checkpoint_id` if it is a well-formed id, else raise InvalidCheckpointId."""
    if not isinstance(checkpoint_id, str) or not ID_RE.fullmatch(checkpoint_id):
        shown = repr(checkpoint_id)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        raise InvalidCheckpointId(
            f"{shown} is not a checkpoint id. Ids look like checkpoint_YYYYMMDD_HHMMSS_xxxxxxxx "
            "(8 lowercase hex digits); take one from list_checkpoints()."
        )
    return checkpoint_id


def new_id(now_local) -> str:
    return f"checkpoint_{now_local:%Y%m%d_%H%M%S}_{secrets.token_hex(4)}"


# ---------------------------------------------------------------- hashing


def tensor_hash(dtype: str, shape: tuple[int, ...], data) -> str:
    """blake3 over dtype, shape and the raw bytes: equal hash <=> identical tensor."""
    nbytes = memoryview(data).nbytes
    h = blake3.blake3(max_threads=blake3.blake3.AUTO if nbytes >= _BIG_TENSOR else 1)
    h.update(_hash_prefix(dtype, shape))
    h.update(data)
    return h.hexdigest()


def tensor_hasher(dtype: str, shape: tuple[int, ...]):
    """An incremental tensor_hash: update() it with the raw bytes in order, then hexdigest()."""
    h = blake3.blake3()
    h.update(_hash_prefix(dtype, shape))
    return h


def _hash_prefix(dtype: str, shape) -> bytes:
    return f"redline-tensor-v1|{dtype}|{','.join(map(str, shape))}|".encode("ascii")


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def _checksum(body) -> str:
    return blake3.blake3(canonical_json(body)).hexdigest()


# ---------------------------------------------------------------- metadata


def encode_metadata(metadata) -> dict:
    """Validate user metadata (before anything is written) and return the dict to store."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(
            f"checkpoint metadata must be a dict, not {type(metadata).__name__}; "
            'pass e.g. metadata={"purpose": "..."}'
        )
    try:
        text = json.dumps(metadata, ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        where = _first_unserialisable(metadata, "metadata", set())
        raise TypeError(
            f"checkpoint metadata must be JSON-serialisable: {where}. Convert it to a str, "
            f"number, bool, None, list or dict (for a tensor: .item() or .tolist()). ({exc})"
        ) from None
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise MetadataTooLarge(
            f"checkpoint metadata is {size} bytes as JSON, over the {MAX_METADATA_BYTES}-byte "
            "limit; keep large data (arrays, logs) in files and put their paths in the metadata."
        )
    return json.loads(text)


def _first_unserialisable(value, path: str, seen: set[int]) -> str:
    if isinstance(value, (dict, list, tuple)):
        if id(value) in seen:
            return f"{path} contains itself (a cycle)"
        seen = seen | {id(value)}
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, (str, int, float, bool)) and k is not None:
                return f"{path} has a key of type {type(k).__name__} ({k!r})"
            found = _first_unserialisable(v, f"{path}[{k!r}]", seen)
            if found:
                return found
        return ""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            found = _first_unserialisable(v, f"{path}[{i}]", seen)
            if found:
                return found
        return ""
    if value is None or isinstance(value, (str, int, float, bool)):
        return ""
    return f"{path} is a {type(value).__module__}.{type(value).__qualname__}"


# ---------------------------------------------------------------- the store


class CheckpointStore:
    """Files of one checkpoint directory. Knows nothing of torch: tensors arrive as bytes."""

    def __init__(self, root: str | os.PathLike, durable: bool = True):
        self.durable = durable  # fsync files and directories (survive power loss, not just crashes)
        self.root = Path(root).expanduser().absolute()
        self.blob_dir = self.root / "blobs"
        self.manifest_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"
        self.lock_path = self.root / "lock"
        self.ensure_dirs()
        self._manifest_cache: dict[str, tuple[tuple[int, int, int], Manifest]] = {}
        self.clean_leftovers()

    def ensure_dirs(self) -> None:
        """(Re)create the directory tree: someone may delete the run directory while we run."""
        for d in (self.root, self.blob_dir, self.manifest_dir, self.tmp_dir):
            if not d.is_dir():
                secure_mkdir(d)

    # -- locking

    @contextlib.contextmanager
    def lock(self, exclusive: bool, blocking: bool = True) -> Iterator[bool]:
        """flock on <dir>/lock; yields False if non-blocking and someone else holds it."""
        with contextlib.suppress(OSError):  # a read-only tree is handled below
            self.ensure_dirs()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:  # a read-only directory: readers still lock (flock needs no write access)
            if exc.errno not in _UNWRITABLE:
                raise
            try:
                fd = os.open(self.lock_path, os.O_RDONLY)
            except FileNotFoundError:
                raise self.unwritable(exc) from None
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

    def clean_leftovers(self) -> int:
        """Remove temp files of crashed saves. Only when no save is running anywhere."""
        removed = 0
        with self.lock(exclusive=True, blocking=False) as got:
            if not got:
                return 0
            for entry in os.scandir(self.tmp_dir):
                with contextlib.suppress(FileNotFoundError, IsADirectoryError):
                    os.unlink(entry.path)
                    removed += 1
        return removed

    def unwritable(self, exc: OSError) -> CheckpointError:
        return CheckpointError(
            f"cannot write to the checkpoint directory {self.root}: {exc.strerror or exc}; nothing "
            "was changed there. Make it writable (permissions, a read-write mount) or choose another run directory."
        )

    def _create(self, tmp: Path, subdir: Path | None = None) -> int:
        """A new private temp file (and `subdir`, if given); a directory that refuses is a CheckpointError."""
        try:
            if subdir is not None:
                secure_mkdir(subdir)
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise self.unwritable(exc) from None
            if exc.errno in _FULL:
                raise CheckpointError(_FULL_MESSAGE) from exc
            raise

    # -- blobs

    def blob_path(self, digest: str) -> Path:
        return self.blob_dir / digest[:2] / f"{digest}.safetensors"

    @staticmethod
    def blob_header(digest: str, dtype: str, shape, nbytes: int) -> bytes:
        header = canonical_json(
            {
                "__metadata__": {"blake3": digest, "format": "pt"},
                BLOB_KEY: {"dtype": dtype, "shape": list(shape), "data_offsets": [0, nbytes]},
            }
        )
        header += b" " * (-len(header) % 8)
        return struct.pack("<Q", len(header)) + header

    def blob_present(self, digest: str, dtype: str, shape, nbytes: int) -> bool:
        """True if the blob exists with the exact expected size (a truncated one is rewritten)."""
        try:
            size = os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return False
        return size == _blob_size(dtype, tuple(shape), nbytes)

    def write_blob(self, digest: str, dtype: str, shape, data) -> None:
        """Write one tensor file durably: temp in tmp/, fsync, rename into blobs/ab/."""
        view = memoryview(data).cast("B")
        target = self.blob_path(digest)
        tmp = self._write_temp((self.blob_header(digest, dtype, shape, view.nbytes), view), target.parent)
        os.replace(tmp, target)

    def _write_temp(self, chunks, subdir: Path | None = None) -> Path:
        """A new private temp file in tmp/ holding `chunks` (fsynced if durable).

        On any failure (a full disk included) the temp file is removed: nothing half written stays.
        """
        tmp = self.tmp_dir / f"{TEMP_PREFIX}{secrets.token_hex(8)}"
        fd = self._create(tmp, subdir)
        try:
            for chunk in chunks:
                _write_all(fd, chunk)
            if self.durable:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        os.close(fd)
        return tmp

    def sync_blob_dirs(self, digests, pool=None) -> None:
        """Make the renames of new blobs durable (before the manifest that names them)."""
        if not self.durable:
            return
        dirs = [self.blob_dir / sub for sub in {d[:2] for d in digests}] + [self.blob_dir]
        for _ in (pool.map(fsync_dir, dirs) if pool else map(fsync_dir, dirs)):
            pass

    def _open_blob(self, rec: TensorRecord, checkpoint_id: str):
        """(path, unbuffered file) of the blob holding `rec`; a missing file is CheckpointCorrupted."""
        path = self.blob_path(rec.hash)
        try:
            return path, open(path, "rb", buffering=0)
        except FileNotFoundError:
            raise CheckpointCorrupted(
                f"checkpoint {checkpoint_id}: the file holding tensor {rec.name!r} is missing "
                f"({path}). This checkpoint cannot be restored; restore another one."
            ) from None

    def read_blob_into(self, rec: TensorRecord, out, *, checkpoint_id: str) -> None:
        """Read the tensor bytes of `rec` into `out` (a writable buffer) and verify the hash."""
        view = memoryview(out).cast("B")
        path, fh = self._open_blob(rec, checkpoint_id)
        h = tensor_hasher(rec.dtype, rec.shape)
        with fh:
            offset = self._check_blob_header(fh, rec, path, checkpoint_id)
            fh.seek(offset)
            got = 0
            while got < rec.nbytes:  # hash each chunk right after reading it, while in cache
                n = fh.readinto(view[got : got + _READ_CHUNK])
                if not n:
                    break
                h.update(view[got : got + n])
                got += n
        if got != rec.nbytes:
            raise self._damaged(rec, path, checkpoint_id, "it is truncated")
        if h.hexdigest() != rec.hash:
            raise self._damaged(rec, path, checkpoint_id, "its bytes do not match their hash")

    def quarantine(self, path: Path) -> None:
        """Move a damaged blob out of the way, so the next save of that content rewrites it.

        Blobs are immutable once renamed in, so a failed check is real damage, never a
        save in progress; a checkpoint referencing it was unusable already.
        """
        with contextlib.suppress(OSError):
            os.replace(path, self.tmp_dir / f"{TEMP_PREFIX}damaged-{path.name}")

    def verify_blob(self, rec: TensorRecord, *, checkpoint_id: str, chunk: int = 16 << 20) -> None:
        """Hash the blob of `rec` in chunks (bounded memory); raise CheckpointCorrupted if bad."""
        path, fh = self._open_blob(rec, checkpoint_id)
        with fh:
            offset = self._check_blob_header(fh, rec, path, checkpoint_id)
            fh.seek(offset)
            h = blake3.blake3(max_threads=blake3.blake3.AUTO)
            h.update(_hash_prefix(rec.dtype, rec.shape))
            buf = bytearray(min(chunk, max(rec.nbytes, 1)))
            mv = memoryview(buf)
            got = 0
            while got < rec.nbytes:
                n = fh.readinto(mv[: min(len(buf), rec.nbytes - got)])
                if not n:
                    break
                h.update(mv[:n])
                got += n
        if got != rec.nbytes:
            raise self._damaged(rec, path, checkpoint_id, "it is truncated")
        if h.hexdigest() != rec.hash:
            raise self._damaged(rec, path, checkpoint_id, "its bytes do not match their hash")

    def _check_blob_header(self, fh, rec: TensorRecord, path: Path, checkpoint_id: str) -> int:
        """Headers are deterministic: the file must start with exactly the one we would write."""
        expected = self.blob_header(rec.hash, rec.dtype, rec.shape, rec.nbytes)
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

    def _damaged(self, rec: TensorRecord, path: Path, checkpoint_id: str, why: str) -> CheckpointCorrupted:
        self.quarantine(path)
        return CheckpointCorrupted(
            f"checkpoint {checkpoint_id}: the file holding tensor {rec.name!r} ({path}) is "
            f"damaged: {why}. The model was not changed. Restore another checkpoint; other "
            "checkpoints that share this tensor are damaged too until a save of a model holding "
            "these values writes the file again."
        )

    # -- manifests

    def manifest_path(self, checkpoint_id: str) -> Path:
        return self.manifest_dir / f"{check_id(checkpoint_id)}.json"

    def exists(self, checkpoint_id: str) -> bool:
        return self.manifest_path(checkpoint_id).is_file()

    def write_manifest(self, body: dict) -> bool:
        """Commit a checkpoint: the manifest appears atomically, never replacing another.

        Returns False (nothing written) if a checkpoint of that id already exists.
        """
        data = json.dumps(
            {"format": FORMAT, "version": VERSION, "checksum": _checksum(body), "body": body},
            ensure_ascii=False,
            indent=1,
        ).encode("utf-8")
        target = self.manifest_path(body["id"])
        tmp = self._write_temp((data,))
        try:
            os.link(tmp, target)  # fails if the id exists: never overwrite a checkpoint
        except FileExistsError:
            return False
        finally:
            os.unlink(tmp)
        if self.durable:
            fsync_dir(self.manifest_dir)
        return True

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
        manifest = self._parse_manifest(checkpoint_id, path.read_bytes())
        self._manifest_cache[checkpoint_id] = (key, manifest)
        return manifest

    def forget(self, checkpoint_id: str) -> None:
        self._manifest_cache.pop(checkpoint_id, None)

    def _parse_manifest(self, checkpoint_id: str, raw: bytes) -> Manifest:
        def damaged(why: str) -> CheckpointCorrupted:
            return CheckpointCorrupted(
                f"checkpoint {checkpoint_id}: its manifest ({self.manifest_path(checkpoint_id)}) "
                f"is damaged: {why}. This one checkpoint cannot be used; every other checkpoint "
                "is unaffected. Restore another one, or delete this one."
            )

        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise damaged("it is not valid JSON (truncated or overwritten)") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT or "body" not in doc:
            raise damaged("it is not a Redline checkpoint manifest")
        if doc.get("version") != VERSION:
            raise damaged(f"it has format version {doc.get('version')!r}, this Redline reads {VERSION}")
        body = doc["body"]
        if doc.get("checksum") != _checksum(body):
            raise damaged("its checksum does not match its contents")
        try:
            tensors = tuple(
                TensorRecord(
                    name=t["name"],
                    hash=t["hash"],
                    dtype=t["dtype"],
                    shape=tuple(int(s) for s in t["shape"]),
                    nbytes=int(t["nbytes"]),
                    aliases=tuple(t.get("aliases", ())),
                )
                for t in body["tensors"]
            )
            manifest = Manifest(
                id=body["id"],
                created=body["created"],
                timestamp=float(body["timestamp"]),
                metadata=body["metadata"],
                model_class=body.get("model_class", ""),
                model_type=body.get("model_type", ""),
                tensors=tensors,
                size_bytes=int(body["size_bytes"]),
                new_bytes=int(body["new_bytes"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise damaged(f"a field is missing or malformed ({exc})") from None
        if manifest.id != checkpoint_id:
            raise damaged(f"it names another checkpoint ({manifest.id})")
        if any(not HASH_RE.fullmatch(t.hash) for t in tensors):
            raise damaged("a tensor hash is malformed")
        for t in tensors:  # a lie here would size buffers and misjudge good tensor files
            if t.dtype not in ITEMSIZE:
                raise damaged(f"tensor {t.name!r} has an unknown dtype {t.dtype!r}")
            if any(s < 0 for s in t.shape) or t.nbytes != ITEMSIZE[t.dtype] * math.prod(t.shape):
                raise damaged(f"tensor {t.name!r} claims {t.nbytes} bytes for {t.dtype}{list(t.shape)}")
        return manifest

    # -- deletion and garbage collection (caller holds the exclusive lock)

    def unlink_manifest(self, checkpoint_id: str) -> bool:
        try:
            os.unlink(self.manifest_path(checkpoint_id))
        except FileNotFoundError:
            return False
        except OSError as exc:
            if exc.errno in _UNWRITABLE:
                raise self.unwritable(exc) from None
            raise
        self.forget(checkpoint_id)
        fsync_dir(self.manifest_dir)
        return True

    def collect_garbage(self) -> int:
        """Delete blobs no manifest references; returns bytes freed.

        While any manifest is damaged nothing is deleted: which files it needs cannot be
        known, and it may yet be repaired. Deleting the damaged checkpoint lifts this.
        """
        referenced: set[str] = set()
        for cid in self.list_ids():
            try:
                referenced.update(t.hash for t in self.read_manifest(cid).tensors)
            except CheckpointNotFound:
                continue
            except CheckpointCorrupted:
                return 0
        freed = 0
        for sub in os.scandir(self.blob_dir):
            if not sub.is_dir():
                continue
            for entry in os.scandir(sub.path):
                digest = entry.name.removesuffix(".safetensors")
                if digest in referenced:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    size = entry.stat().st_size
                    os.unlink(entry.path)
                    freed += size
        return freed

    def discard_unreferenced(self) -> int:
        """After a failed save: delete tensor files no manifest names, unless a save runs anywhere."""
        try:
            with self.lock(exclusive=True, blocking=False) as got:
                return self.collect_garbage() if got else 0
        except (CheckpointError, OSError):
            return 0

    def disk_usage(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.stat(os.path.join(dirpath, name)).st_size
        return total


@functools.lru_cache(maxsize=4096)
def _blob_size(dtype: str, shape: tuple[int, ...], nbytes: int) -> int:
    """A blob file's exact size; its header's length does not depend on which digest it names."""
    return len(CheckpointStore.blob_header("0" * 64, dtype, shape, nbytes)) + nbytes


_UNWRITABLE = (errno.EROFS, errno.EACCES, errno.EPERM)
_FULL = (errno.ENOSPC, errno.EDQUOT)
_FULL_MESSAGE = ("the disk is full while writing a checkpoint; nothing was committed. Free "
                 "space (delete old checkpoints with delete_checkpoint) and save again.")


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while view:
        try:
            n = os.write(fd, view[: 1 << 30])
        except OSError as exc:
            if exc.errno in _FULL:
                raise CheckpointError(_FULL_MESSAGE) from exc
            raise
        view = view[n:]


__all__ = [
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "CheckpointStore",
    "InvalidCheckpointId",
    "Manifest",
    "MetadataTooLarge",
    "TensorRecord",
    "check_id",
    "encode_metadata",
    "new_id",
    "tensor_hash",
    "tensor_hasher",
]
