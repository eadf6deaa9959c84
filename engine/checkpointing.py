"""Checkpoints of a live model: save, list, verify, restore, compare, export (the guide's API).

    checkpointer = CheckpointManager(model=model, checkpoint_dir="data/checkpoints")
    checkpoint_id = checkpointer.save_checkpoint(metadata={"purpose": "baseline"})
    checkpointer.restore_checkpoint(checkpoint_id)   # True, or False with .last_error

Files are standard safetensors (one content-addressed file per distinct tensor, so an unchanged
tensor is never written twice) plus one JSON manifest per checkpoint; nothing is pickled.
See engine/checkpoint_store.py for the layout and the crash-safety argument, and
engine/auto_checkpoint.py for AutoCheckpointer.
"""

from __future__ import annotations

import copy
import contextlib
import datetime as _dt
import json
import math
import os
import secrets
import threading
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.checkpoint_store import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    CheckpointStore,
    InvalidCheckpointId,
    Manifest,
    MetadataTooLarge,
    TensorRecord,
    check_id,
    encode_metadata,
    new_id,
    tensor_hash,
    tensor_hasher,
)
from engine.checkpoint_tensors import (
    TensorGroup,
    as_tensor,
    copy_and_hash,
    host_bytes,
    model_groups,
    new_host_buffer,
    numpy_bytes,
    same_bytes,
    sync_devices,
    untracked,
)
from engine.fsutil import FILE_MODE, TEMP_PREFIX, secure_mkdir

_MAX_LISTED_PROBLEMS = 5
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def _run_all(fn, items) -> list:
    """fn over items on the I/O pool; waits for every task before raising the first error."""
    futures = [_io_pool().submit(fn, item) for item in items]
    wait(futures)
    return [f.result() for f in futures]


def _io_pool() -> ThreadPoolExecutor:
    """Shared workers for hashing, comparing and file I/O (all release the GIL)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(
                max_workers=min(8, max(4, os.cpu_count() or 4)), thread_name_prefix="redline-ckpt"
            )
        return _pool


@dataclass
class _Held:
    """One tensor of the in-memory snapshot: verified bytes and their hash."""

    hash: str
    dtype: str
    shape: tuple[int, ...]
    buf: torch.Tensor


@dataclass
class _Snapshot:
    """A checkpoint's state held in host memory (pinned on CUDA)."""

    checkpoint_id: str | None
    manifest: Manifest | None
    tensors: dict[str, _Held]  # by the manifest's (first) tensor name
    pinned: bool = False
    by_hash: dict[str, torch.Tensor] = field(init=False)

    def __post_init__(self):
        self.by_hash = {h.hash: h.buf for h in self.tensors.values()}

    @property
    def nbytes(self) -> int:
        return sum(b.nbytes for b in self.by_hash.values())


class _Claims:
    """Hashes already handled by this save (equal tensors in one model are written once)."""

    def __init__(self):
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def first(self, digest: str) -> bool:
        with self._lock:
            if digest in self._seen:
                return False
            self._seen.add(digest)
            return True


class CheckpointManager:
    """Saves and restores a model's state (parameters and persistent buffers).

    Memory: with ``memory_snapshot=True`` (default) the state of the most recent save, or of
    the checkpoint given to :meth:`hold_in_memory`, is kept in host memory (pinned when the
    model is on CUDA). That costs one copy of the model's unique tensor bytes (tied weights
    once; see ``memory_snapshot_bytes``) and buys two things: restoring that checkpoint reads
    no disk (a memory-bandwidth copy), and the next save compares bytes against it (memcmp)
    instead of hashing every tensor, so an unchanged tensor costs almost nothing. Restores of
    other checkpoints also reuse held tensors whose hash matches. With
    ``memory_snapshot=False`` nothing is held unless ``hold_in_memory`` asks, and each save
    hashes every tensor (blake3, about 0.2 s per GB on two cores).

    Which state is held: the most recent save or disk restore of this manager, unless
    :meth:`hold_in_memory` pinned one; a pinned state stays until another ``hold_in_memory``
    or :meth:`release_memory_snapshot`. (Pin the last good checkpoint, so a forensic save of
    a broken state does not displace it.)

    Durability: with ``durable=True`` (default) every file and directory is fsynced before
    the manifest commits a save, so a checkpoint survives power loss as well as a crash;
    that makes a save wait for the disk. ``durable=False`` skips the fsyncs: a save is still
    all-or-nothing if the process dies at any instant (the kernel keeps what was written),
    but after a power loss the newest checkpoints may be found damaged (verification says
    so; none is ever silently wrong).

    Thread use: save/restore/delete from one thread at a time per manager (the engine
    thread); list_checkpoints/get_checkpoint from any. Several managers, in this or other
    processes, may share one directory.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        checkpoint_dir: str | os.PathLike,
        *,
        memory_snapshot: bool = True,
        pin_memory: bool | None = None,
        durable: bool = True,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.memory_snapshot = memory_snapshot
        self.pin_memory = pin_memory
        self._store = CheckpointStore(checkpoint_dir, durable=durable)
        self.checkpoint_dir: Path = self._store.root
        self.manifest_dir: Path = self._store.manifest_dir
        self.last_error: str | None = None
        self._snapshot: _Snapshot | None = None
        self._verified: dict[str, bool] = {}
        self._damaged: dict[str, str] = {}

    # ------------------------------------------------------------ saving

    def save_checkpoint(self, metadata: dict | None = None) -> str:
        """Save the model's current state; return its id ``checkpoint_YYYYMMDD_HHMMSS_xxxxxxxx``.

        `metadata` must be JSON-serialisable (TypeError otherwise, before anything is
        written) and at most 1 MiB as JSON; it is stored and listed back exactly as JSON
        gives it back (strings byte-exact, NaN kept; tuples come back as lists).
        A save that fails (disk full, unwritable directory) leaves no file behind.
        """
        meta = encode_metadata(metadata)
        try:
            return self._save(meta)
        except (CheckpointError, OSError):
            self._store.discard_unreferenced()
            raise

    def _save(self, meta: dict) -> str:
        groups = model_groups(self.model)
        dtypes = [g.dtype_name for g in groups]  # unsupported dtype: fail before writing
        now = _dt.datetime.now().astimezone()
        checkpoint_id = new_id(now)
        snap = self._snapshot
        follow = self.memory_snapshot and not (snap and snap.pinned)
        pin = self._pin()
        with untracked():
            hosts = [host_bytes(g.tensor, pin) for g in groups]
            sync_devices(g.tensor for g in groups)
            claimed = _Claims()
            jobs = [
                (g, dt, host, copied, snap.tensors.get(g.name) if snap else None, follow, claimed)
                for g, dt, (host, copied) in zip(groups, dtypes, hosts)
            ]
            with self._store.lock(exclusive=False):
                results = _run_all(self._save_one, jobs)
                written = [r[0] for r in results if r[1]]
                if written:
                    self._store.sync_blob_dirs(written, _io_pool())
                records = tuple(
                    TensorRecord(g.name, digest, dt, g.shape, int(g.tensor.nbytes), tuple(g.names[1:]))
                    for g, dt, (digest, _wrote, _buf) in zip(groups, dtypes, results)
                )
                body = {
                    "id": None,
                    "created": now.isoformat(),
                    "timestamp": now.timestamp(),
                    "metadata": meta,
                    "model_class": type(self.model).__name__,
                    "model_type": str(getattr(getattr(self.model, "config", None), "model_type", "")),
                    "tensors": [r.to_json() for r in records],
                    "num_tensors": len(records),
                    "size_bytes": sum(r.nbytes for r in records),
                    "new_bytes": sum(r[1] for r in results),
                }
                for attempt in range(5):  # an id taken in the same second: draw another
                    body["id"] = checkpoint_id
                    if self._store.write_manifest(body):
                        break
                    checkpoint_id = new_id(now)
                else:
                    raise CheckpointError("could not find a free checkpoint id; save again")
        manifest = self._store.read_manifest(checkpoint_id)
        if follow:
            held = {
                rec.name: _Held(rec.hash, rec.dtype, rec.shape, buf)
                for rec, (_d, _w, buf) in zip(records, results)
            }
            self._snapshot = _Snapshot(checkpoint_id, manifest, held)
        return checkpoint_id

    def _save_one(self, job) -> tuple[str, int, torch.Tensor | None]:
        """Hash (or prove unchanged), then write if new. Returns (hash, bytes written, held buf)."""
        group, dt, host, copied, held, follow, claimed = job
        if held is not None and held.dtype == dt and held.shape == group.shape and same_bytes(
            host, held.buf
        ):
            digest, source, keep = held.hash, host, held.buf
        else:
            if follow and not copied:  # the snapshot needs its own copy of the live bytes
                source = new_host_buffer(host.nbytes, host.is_pinned())
                hasher = tensor_hasher(dt, group.shape)
                copy_and_hash(source, host, hasher)
                digest = hasher.hexdigest()
            else:
                source = host
                digest = tensor_hash(dt, group.shape, numpy_bytes(source))
            keep = source if follow else None
        wrote = 0
        if claimed.first(digest) and not self._store.blob_present(
            digest, dt, group.shape, host.nbytes
        ):
            self._store.write_blob(digest, dt, group.shape, numpy_bytes(source))
            wrote = host.nbytes
        return digest, wrote, keep

    # ------------------------------------------------------------ listing

    def list_checkpoints(self) -> list[dict]:
        """Every readable checkpoint of the directory (any process's), oldest first.

        Each dict: id, metadata, created (ISO 8601), timestamp (epoch s), size_bytes (tensor
        bytes it references), new_bytes (bytes its save wrote), num_tensors (distinct
        tensors), verified (True/False, None if not verified by this manager), in_memory,
        model_class, model_type. Damaged manifests are left out: see damaged_checkpoints().
        """
        entries = []
        damaged: dict[str, str] = {}
        for cid in self._store.list_ids():
            try:
                entries.append(self._entry(self._store.read_manifest(cid)))
            except CheckpointNotFound:
                continue
            except CheckpointCorrupted as exc:
                damaged[cid] = str(exc)
        self._damaged = damaged
        entries.sort(key=lambda e: (e["timestamp"], e["id"]))
        return entries

    def damaged_checkpoints(self) -> list[dict]:
        """Checkpoints whose manifest is damaged, as {id, error}, found by the last listing."""
        self.list_checkpoints()
        return [{"id": k, "error": v} for k, v in sorted(self._damaged.items())]

    def get_checkpoint(self, checkpoint_id: str) -> dict:
        """One checkpoint as list_checkpoints gives it; raises InvalidCheckpointId if unknown."""
        return self._entry(self._store.read_manifest(check_id(checkpoint_id)))

    def _entry(self, m: Manifest) -> dict:
        return {
            "id": m.id,
            "metadata": copy.deepcopy(m.metadata),
            "created": m.created,
            "timestamp": m.timestamp,
            "size_bytes": m.size_bytes,
            "new_bytes": m.new_bytes,
            "num_tensors": len(m.tensors),
            "verified": self._verified.get(m.id),
            "in_memory": self.memory_snapshot_id == m.id,
            "model_class": m.model_class,
            "model_type": m.model_type,
        }

    def get_disk_usage(self) -> int:
        """Bytes of every file under the checkpoint directory (apparent size)."""
        return self._store.disk_usage()

    # ------------------------------------------------------------ verify / restore

    def verify_checkpoint(self, checkpoint_id: str) -> bool:
        """Re-hash every tensor file of a checkpoint; never touches the model."""
        try:
            manifest = self._store.read_manifest(check_id(checkpoint_id))
            unique = {r.hash: r for r in manifest.tensors}.values()
            _run_all(lambda r: self._store.verify_blob(r, checkpoint_id=checkpoint_id), unique)
        except Exception as exc:
            return self._fail(checkpoint_id, exc)
        self._verified[checkpoint_id] = True
        self.last_error = None
        return True

    def restore_checkpoint(self, checkpoint_id: str) -> bool:
        """Put the model back into a checkpoint's state, all or nothing.

        Every tensor is read and verified against its hash, and the checkpoint is checked to
        fit the model (names, shapes, dtypes, ties), before anything is written; then each
        tensor is copied in place, so tied weights stay one storage. Returns False, with the
        reason in ``last_error``, on any failure; the model is then untouched.
        """
        try:
            self._restore(checkpoint_id)
        except Exception as exc:
            return self._fail(checkpoint_id, exc)
        self.last_error = None
        return True

    def _restore(self, checkpoint_id: str) -> None:
        check_id(checkpoint_id)
        snap = self._snapshot
        in_memory = snap is not None and snap.checkpoint_id == checkpoint_id
        manifest = snap.manifest if in_memory else self._store.read_manifest(checkpoint_id)
        groups = model_groups(self.model)
        plan = _fit(manifest, groups, type(self.model).__name__)
        sources = self._load(manifest, {rec.hash: rec for _g, rec in plan}.values())
        with torch.no_grad(), untracked():
            for group, rec in plan:
                src = as_tensor(sources[rec.hash], rec.dtype, rec.shape)
                group.tensor.copy_(src, non_blocking=src.is_pinned())
            sync_devices(g.tensor for g, _ in plan)
        if not in_memory:
            self._verified[checkpoint_id] = True
            if self.memory_snapshot and not (snap and snap.pinned):
                self._snapshot = self._snapshot_of(manifest, sources, pinned=False)

    def _load(self, manifest: Manifest, records) -> dict[str, torch.Tensor]:
        """Verified host bytes for `records`: held ones from memory, the rest from disk."""
        held = self._snapshot.by_hash if self._snapshot else {}
        sources = {r.hash: held[r.hash] for r in records if r.hash in held}
        todo = [r for r in records if r.hash not in sources]
        pin = self._pin()
        bufs = [new_host_buffer(r.nbytes, pin) for r in todo]

        def read(job):
            rec, buf = job
            self._store.read_blob_into(rec, numpy_bytes(buf), checkpoint_id=manifest.id)

        _run_all(read, list(zip(todo, bufs)))
        sources.update((r.hash, b) for r, b in zip(todo, bufs))
        return sources

    def _fail(self, checkpoint_id, exc: Exception) -> bool:
        if isinstance(exc, CheckpointError):
            msg = str(exc)
            if isinstance(exc, CheckpointCorrupted) and isinstance(checkpoint_id, str):
                self._verified[checkpoint_id] = False
        else:
            msg = (
                f"checkpoint {checkpoint_id}: {type(exc).__name__}: {exc}. The model was not "
                "changed unless this happened while copying tensors into it; restore again."
            )
        self.last_error = msg
        return False

    # ------------------------------------------------------------ memory snapshot

    @property
    def memory_snapshot_id(self) -> str | None:
        """Id of the checkpoint held in host memory, or None."""
        return self._snapshot.checkpoint_id if self._snapshot else None

    @property
    def memory_snapshot_bytes(self) -> int:
        """Host memory the held snapshot uses (one copy of the unique tensor bytes)."""
        return self._snapshot.nbytes if self._snapshot else 0

    def hold_in_memory(self, checkpoint_id: str) -> None:
        """Keep this checkpoint's state in host memory (pinned on CUDA) until told otherwise.

        Tensors the current snapshot already holds (same hash) are reused; the rest are read
        and verified from disk. Raises CheckpointError if the checkpoint cannot be read.
        """
        check_id(checkpoint_id)
        snap = self._snapshot
        if snap is not None and snap.checkpoint_id == checkpoint_id:
            snap.pinned = True
            return
        manifest = self._store.read_manifest(checkpoint_id)
        sources = self._load(manifest, {r.hash: r for r in manifest.tensors}.values())
        self._verified[checkpoint_id] = True
        self._snapshot = self._snapshot_of(manifest, sources, pinned=True)

    def release_memory_snapshot(self) -> None:
        """Free the held snapshot; the next save (if memory_snapshot) holds its own state."""
        self._snapshot = None

    @staticmethod
    def _snapshot_of(manifest: Manifest, sources, pinned: bool) -> _Snapshot:
        held = {
            r.name: _Held(r.hash, r.dtype, r.shape, sources[r.hash]) for r in manifest.tensors
        }
        return _Snapshot(manifest.id, manifest, held, pinned=pinned)

    def _pin(self) -> bool:
        if not torch.cuda.is_available():
            return False
        if self.pin_memory is not None:
            return self.pin_memory
        return any(t.is_cuda for t in self.model.state_dict(keep_vars=True).values()
                   if isinstance(t, torch.Tensor))

    # ------------------------------------------------------------ delete

    def delete_checkpoint(self, checkpoint_id: str) -> bool:
        """Delete one checkpoint and the tensor files no other checkpoint uses.

        Returns False if it does not exist. Tensor files that another checkpoint, or a save
        in progress in any process, still needs are never removed.
        """
        check_id(checkpoint_id)
        with self._store.lock(exclusive=True):
            if not self._store.unlink_manifest(checkpoint_id):
                self.last_error = f"no checkpoint {checkpoint_id} in {self.checkpoint_dir}"
                return False
            self._store.collect_garbage()
        self._verified.pop(checkpoint_id, None)
        if self._snapshot and self._snapshot.checkpoint_id == checkpoint_id:
            self._snapshot.checkpoint_id = None  # bytes stay useful for incremental saves
            self._snapshot.pinned = False
        return True

    # ------------------------------------------------------------ compare

    def compare_checkpoints(self, checkpoint_id_1: str, checkpoint_id_2: str) -> dict:
        """Per-tensor differences between two checkpoints, largest change first.

        Tensors with the same content hash are skipped without reading them. Each difference:
        layer, change (L2 norm of b - a), relative (change / ||a||), max_abs_change; names
        present in one checkpoint only, or with another shape or dtype, have change = inf and
        a `note`.
        """
        m1 = self._store.read_manifest(check_id(checkpoint_id_1))
        m2 = self._store.read_manifest(check_id(checkpoint_id_2))
        names2 = m2.by_name()
        seen2: set[str] = set()
        diffs = []
        for rec in m1.tensors:
            other = next((names2[n] for n in rec.names if n in names2), None)
            if other is None:
                diffs.append(_structural(rec, "only in checkpoint_id_1"))
                continue
            seen2.add(other.name)
            if other.hash == rec.hash:
                continue
            if other.dtype != rec.dtype or other.shape != rec.shape:
                diffs.append(_structural(rec, f"{rec.dtype}{list(rec.shape)} -> "
                                              f"{other.dtype}{list(other.shape)}"))
                continue
            bufs = self._load(m1, [rec]) | self._load(m2, [other])
            a = as_tensor(bufs[rec.hash], rec.dtype, rec.shape)
            b = as_tensor(bufs[other.hash], other.dtype, other.shape)
            diffs.append(_difference(rec, a, b))
        diffs += [_structural(r, "only in checkpoint_id_2") for r in m2.tensors if r.name not in seen2]
        return _comparison(checkpoint_id_1, checkpoint_id_2, diffs)

    def compare_with_model(self, checkpoint_id: str) -> dict:
        """Like compare_checkpoints, from a checkpoint to the live model ("current")."""
        manifest = self._store.read_manifest(check_id(checkpoint_id))
        names = manifest.by_name()
        groups = model_groups(self.model)
        seen: set[str] = set()
        diffs = []
        held = self._snapshot.by_hash if self._snapshot else {}
        with untracked():
            for g in groups:
                rec = next((names[n] for n in g.names if n in names), None)
                if rec is None:
                    diffs.append(_structural(_record_of(g), "only in the model"))
                    continue
                seen.add(rec.name)
                if rec.dtype != g.dtype_name or rec.shape != g.shape:
                    diffs.append(_structural(rec, f"{rec.dtype}{list(rec.shape)} -> "
                                                  f"{g.dtype_name}{list(g.shape)}"))
                    continue
                host, _ = host_bytes(g.tensor, False)
                if rec.hash in held:
                    if same_bytes(host, held[rec.hash]):
                        continue
                elif tensor_hash(rec.dtype, rec.shape, numpy_bytes(host)) == rec.hash:
                    continue
                a = as_tensor(self._load(manifest, [rec])[rec.hash], rec.dtype, rec.shape)
                diffs.append(_difference(rec, a, g.tensor.detach().cpu()))
        diffs += [_structural(r, "only in the checkpoint") for r in manifest.tensors
                  if r.name not in seen]
        return _comparison(checkpoint_id, "current", diffs)

    # ------------------------------------------------------------ export

    def export_safetensors(self, checkpoint_id: str, path: str | os.PathLike) -> Path:
        """Write the checkpoint as one standalone .safetensors file (like safetensors' save_model:
        tied names stored once, listed in the file's metadata); returns the path."""
        from safetensors.torch import save_file

        manifest = self._store.read_manifest(check_id(checkpoint_id))
        target = Path(path).expanduser().absolute()
        secure_mkdir(target.parent)
        tensors = self._export_tensors(manifest)
        meta = {
            "format": "pt",
            "redline.checkpoint_id": manifest.id,
            "redline.aliases": json.dumps({a: r.name for r in manifest.tensors for a in r.aliases}),
            "redline.metadata": json.dumps(manifest.metadata, ensure_ascii=False),
        }
        tmp = target.parent / f"{TEMP_PREFIX}{secrets.token_hex(8)}.safetensors"
        try:
            save_file(tensors, str(tmp), metadata=meta)
            os.chmod(tmp, FILE_MODE)
            os.replace(tmp, target)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        return target

    def export_pretrained(self, checkpoint_id: str, out_dir: str | os.PathLike) -> Path:
        """Write a Hugging Face model directory (config from the live model, the checkpoint's
        weights) that ``AutoModelForCausalLM.from_pretrained`` loads; returns the directory.

        The checkpoint must fit the live model; `out_dir` must not exist or be empty.
        """
        from safetensors.torch import save_file

        manifest = self._store.read_manifest(check_id(checkpoint_id))
        config = getattr(self.model, "config", None)
        if config is None or not hasattr(config, "save_pretrained"):
            raise CheckpointError(
                "export_pretrained needs a Hugging Face model (with .config); use "
                "export_safetensors for other models"
            )
        _fit(manifest, model_groups(self.model), type(self.model).__name__)
        target = Path(out_dir).expanduser().absolute()
        if target.exists() and (not target.is_dir() or any(target.iterdir())):
            raise CheckpointError(f"{target} already exists and is not an empty directory; "
                                  "choose a new directory for the export")
        secure_mkdir(target.parent)
        tmp = secure_mkdir(target.parent / f"{TEMP_PREFIX}export-{secrets.token_hex(6)}")
        try:
            config.save_pretrained(tmp)
            gen = getattr(self.model, "generation_config", None)
            if gen is not None:
                gen.save_pretrained(tmp)
            save_file(self._export_tensors(manifest), str(tmp / "model.safetensors"),
                      metadata={"format": "pt"})
            for f in tmp.iterdir():
                os.chmod(f, FILE_MODE)
            if target.exists():
                target.rmdir()
            os.rename(tmp, target)
        except BaseException:
            for f in tmp.iterdir():
                f.unlink()
            tmp.rmdir()
            raise
        return target

    def _export_tensors(self, manifest: Manifest) -> dict[str, torch.Tensor]:
        sources = self._load(manifest, {r.hash: r for r in manifest.tensors}.values())
        out, used = {}, set()
        for r in manifest.tensors:
            t = as_tensor(sources[r.hash], r.dtype, r.shape)
            out[r.name] = t.clone() if r.hash in used else t  # safetensors refuses shared memory
            used.add(r.hash)
        return out


# ---------------------------------------------------------------- fit and differences


def _fit(
    manifest: Manifest, groups: list[TensorGroup], model_class: str
) -> list[tuple[TensorGroup, TensorRecord]]:
    """Pair each model tensor with its record, or raise CheckpointMismatch saying what differs."""
    names = manifest.by_name()
    in_model = {n for g in groups for n in g.names}
    missing = [n for g in groups for n in g.names if n not in names]
    extra = [n for n in names if n not in in_model]
    problems = []
    if missing:
        problems.append(f"{_count(missing, 'tensor')} of this model are missing from the "
                        f"checkpoint ({_first(missing)})")
    if extra:
        problems.append(f"{_count(extra, 'tensor')} of the checkpoint are not in this model "
                        f"({_first(extra)})")
    plan = []
    for g in groups:
        recs = [names[n] for n in g.names if n in names]
        if not recs:
            continue
        rec = recs[0]
        if rec.shape != g.shape:
            problems.append(f"{rec.name} has shape {list(rec.shape)} in the checkpoint, "
                            f"{list(g.shape)} in the model")
        elif rec.dtype != g.dtype_name:
            problems.append(f"{rec.name} has dtype {rec.dtype} in the checkpoint, "
                            f"{g.dtype_name} in the model")
        elif len({r.hash for r in recs}) > 1:
            problems.append(f"{' and '.join(g.names)} are one tied tensor in this model but "
                            "hold different values in the checkpoint")
        else:
            plan.append((g, rec))
    if problems:
        more = len(problems) - _MAX_LISTED_PROBLEMS
        saved_from = manifest.model_class or "an unknown model"
        if manifest.model_type:
            saved_from += f" ({manifest.model_type})"
        raise CheckpointMismatch(
            f"checkpoint {manifest.id} does not fit this model: "
            f"{'; '.join(problems[:_MAX_LISTED_PROBLEMS])}"
            f"{f'; and {more} more differences' if more > 0 else ''}. It was saved from "
            f"{saved_from}; this model is {model_class}. The model was not changed; restore a checkpoint "
            "saved from this architecture, or load the model it was saved from."
        )
    return plan


def _count(items: list, noun: str) -> str:
    return f"{len(items)} {noun}{'s' if len(items) != 1 else ''}"


def _first(names: list[str], k: int = 3) -> str:
    shown = ", ".join(names[:k])
    return shown + (f", and {len(names) - k} more" if len(names) > k else "")


def _record_of(g: TensorGroup) -> TensorRecord:
    return TensorRecord(g.name, "", g.dtype_name, g.shape, int(g.tensor.nbytes), tuple(g.names[1:]))


def _structural(rec: TensorRecord, note: str) -> dict:
    return {"layer": rec.name, "change": math.inf, "relative": math.inf,
            "max_abs_change": math.inf, "aliases": list(rec.aliases), "note": note}


def _difference(rec: TensorRecord, a: torch.Tensor, b: torch.Tensor) -> dict:
    a64 = a.to(torch.float64)
    d = b.to(torch.float64) - a64
    change = float(torch.linalg.vector_norm(d)) if d.numel() else 0.0
    base = float(torch.linalg.vector_norm(a64)) if d.numel() else 0.0
    if base > 0 and math.isfinite(base):
        relative = change / base
    else:
        relative = 0.0 if change == 0 else math.inf
    max_abs = float(d.abs().max()) if d.numel() else 0.0
    return {"layer": rec.name, "change": change, "relative": relative,
            "max_abs_change": max_abs, "aliases": list(rec.aliases)}


def _comparison(id1: str, id2: str, diffs: list[dict]) -> dict:
    diffs.sort(key=lambda d: (not math.isnan(d["change"]), -d["change"] if not math.isnan(d["change"]) else 0))
    return {"checkpoint_id_1": id1, "checkpoint_id_2": id2,
            "num_differences": len(diffs), "differences": diffs}


from engine.auto_checkpoint import AutoCheckpointer  # noqa: E402  (re-export; it imports us)

__all__ = [
    "AutoCheckpointer",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "InvalidCheckpointId",
    "MetadataTooLarge",
]
