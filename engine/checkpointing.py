"""Checkpoints of a live model: save, list, verify, restore, compare, export (the guide's API).

    checkpointer = CheckpointManager(model=model, checkpoint_dir="data/checkpoints")
    checkpoint_id = checkpointer.save_checkpoint(metadata={"purpose": "baseline"})
    checkpointer.restore_checkpoint(checkpoint_id)   # True, or False with .last_error

Files are standard safetensors (one content-addressed file per distinct tensor, so an unchanged
tensor is never written twice) plus one JSON manifest per checkpoint; nothing is pickled.
See engine/store/store.py for the layout and the crash-safety argument, and
engine/store/auto_checkpoint.py for AutoCheckpointer. Another storage backend plugs in as
``CheckpointManager(..., store=...)`` (engine/store/interface.py).
"""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path

import torch

from engine.store import auto_checkpoint
from engine.store.comparison import compare_manifests, compare_to_model, fit
from engine.store.errors import (
    CheckpointCorrupted,
    CheckpointError,
    CheckpointMismatch,
    CheckpointNotFound,
    InvalidCheckpointId,
    MetadataTooLarge,
)
from engine.store.export import export_tensors, write_pretrained, write_safetensors
from engine.store.interface import CheckpointStorage
from engine.store.manifests import Manifest, TensorRecord, check_id, manifest_body, new_id
from engine.store.metadata import encode_metadata
from engine.store.repair import check_and_repair
from engine.store.saving import save_tensor
from engine.store.snapshot import Claims, HeldTensor, Snapshot
from engine.store.staging_pool import staging_pool
from engine.store.store import CheckpointStore
from engine.store.tensors import (
    as_tensor,
    copy_into,
    host_bytes,
    model_groups,
    new_host_arena,
    new_host_buffer,
    numpy_bytes,
    sync_devices,
    untracked,
)
from engine.store.workers import run_all


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
    hashes every tensor (blake3, about 0.2 s per GB on two cores). ``memory_budget`` (bytes;
    None: no limit) caps that copy: a state larger than it is never held, not even when
    ``hold_in_memory`` asks, and rollback reads the verified files (engine/rollback_memory.py).

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

    Storage: ``store=`` takes any CheckpointStorage (engine/store/interface.py); the default
    is the content-addressed CheckpointStore in `checkpoint_dir`. ``watch_path`` is the folder
    whose changes mean another process saved or deleted a checkpoint.

    Integrity: a save reuses a tensor file already on disk only after proving it holds the
    tensor's bytes (engine/store/blobs.py); a damaged one is rewritten from the live tensor
    and listed in ``repairs`` (the last save's). A restore from disk verifies every file and
    names a damaged one (checkpoint and tensor) in ``last_error``. A restore served from the
    held host copy reads no disk, so that checkpoint's files are then unchecked
    (``disk_unchecked``) until :meth:`check_and_repair` re-reads them.

    ``readonly=True`` opens the directory for reading only: nothing is ever written there
    (no lock file, no temp folder); saves and deletions raise CheckpointError.

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
        store: CheckpointStorage | None = None,
        readonly: bool = False,
        memory_budget: int | None = None,
    ):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, not {type(model).__name__}")
        self.model = model
        self.memory_snapshot = memory_snapshot
        self.pin_memory = pin_memory
        self.memory_budget = memory_budget
        self.store: CheckpointStorage = (store if store is not None
                                         else CheckpointStore(checkpoint_dir, durable=durable, readonly=readonly))
        self.checkpoint_dir: Path = self.store.root
        self.last_error: str | None = None
        self.repairs: list[dict] = []  # damaged tensor files the last save rewrote: {checkpoint_id, tensor, hash, why}
        self.disk_unchecked: set[str] = set()  # restored from host memory since their files were last checked
        self._snapshot: Snapshot | None = None
        self._verified: dict[str, bool] = {}
        self._damaged: dict[str, str] = {}

    @property
    def watch_path(self) -> Path:
        """The folder whose changes mean another process saved or deleted a checkpoint."""
        return self.store.watch_path

    @property
    def manifest_dir(self) -> Path:
        """The default store's manifest folder: the same as watch_path (kept for the engine thread)."""
        return self.store.watch_path

    # ------------------------------------------------------------ saving

    def save_checkpoint(self, metadata: dict | None = None) -> str:
        """Save the model's current state; return its id ``checkpoint_YYYYMMDD_HHMMSS_xxxxxxxx``.

        `metadata` must be JSON-serialisable (TypeError otherwise, before anything is
        written) and at most 1 MiB as JSON; it is stored and listed back exactly as JSON
        gives it back (strings byte-exact, NaN kept; tuples come back as lists).
        A save that fails (disk full, unwritable directory) leaves no file behind.
        """
        meta = encode_metadata(metadata)
        staged, before = [], self._snapshot
        try:
            return self._save(meta, staged)
        except (CheckpointError, OSError):
            self.store.discard_unreferenced()
            raise
        finally:  # staging buffers back to the pool; the old snapshot's buffers join it
            held = self._snapshot.by_hash.values() if self._snapshot else ()
            replaced = before.by_hash.values() if before is not None and before is not self._snapshot else ()
            staging_pool().settle([host for host, _ in staged], held, replaced)

    def _save(self, meta: dict, hosts: list) -> str:
        groups = model_groups(self.model)
        dtypes = [g.dtype_name for g in groups]  # unsupported dtype: fail before writing
        now = _dt.datetime.now().astimezone()
        checkpoint_id = new_id(now)
        snap = self._snapshot
        follow = self.memory_snapshot and not (snap and snap.pinned) and self._fits(g.tensor.nbytes for g in groups)
        pin = self._pin()
        with untracked():
            hosts.extend(host_bytes(g.tensor, pin, staging_pool()) for g in groups)
            sync_devices(g.tensor for g in groups)
            claimed = Claims()
            jobs = [
                (g, dt, host, copied, snap.tensors.get(g.name) if snap else None, follow, claimed)
                for g, dt, (host, copied) in zip(groups, dtypes, hosts)
            ]
            with self.store.saving():
                results = run_all(lambda job: save_tensor(self.store, job), jobs)
                written = [r[0] for r in results if r[2] is not None and r[2].state != "same"]
                records = tuple(
                    TensorRecord(g.name, digest, dt, g.shape, int(g.tensor.nbytes), tuple(g.names[1:]), checksum)
                    for g, dt, (digest, checksum, _found, _buf) in zip(groups, dtypes, results)
                )
                new_bytes = sum(rec.nbytes for rec, r in zip(records, results) if r[2] is not None and r[2].state != "same")
                body = manifest_body(now, meta, self.model, records, new_bytes=new_bytes)
                for attempt in range(5):  # an id taken in the same second: draw another
                    body["id"] = checkpoint_id
                    if self.store.commit(body, written):
                        break
                    checkpoint_id = new_id(now)
                else:
                    raise CheckpointError("could not find a free checkpoint id; save again")
        self.repairs = [
            {"checkpoint_id": checkpoint_id, "tensor": rec.name, "hash": rec.hash, "why": found.why}
            for rec, (_d, _c, found, _b) in zip(records, results) if found is not None and found.state == "damaged"
        ]
        manifest = self.store.read_manifest(checkpoint_id)
        if follow:
            held = {
                rec.name: HeldTensor(rec.hash, rec.dtype, rec.shape, buf, rec.xxh3)
                for rec, (_d, _c, _f, buf) in zip(records, results)
            }
            self._snapshot = Snapshot(checkpoint_id, manifest, held)
        return checkpoint_id

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
        for cid in self.store.list_ids():
            try:
                entries.append(self._entry(self.store.read_manifest(cid)))
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
        return self._entry(self.store.read_manifest(check_id(checkpoint_id)))

    def _entry(self, m: Manifest) -> dict:
        return m.listing(verified=self._verified.get(m.id), in_memory=self.memory_snapshot_id == m.id)

    def get_disk_usage(self) -> int:
        """Bytes of every file under the checkpoint directory (apparent size)."""
        return self.store.disk_usage()

    # ------------------------------------------------------------ verify / restore

    def verify_checkpoint(self, checkpoint_id: str) -> bool:
        """Re-hash every tensor file of a checkpoint; never touches the model."""
        try:
            manifest = self.store.read_manifest(check_id(checkpoint_id))
            unique = {r.hash: r for r in manifest.tensors}.values()
            run_all(lambda r: self.store.read_blob(r, checkpoint_id=checkpoint_id, exact=True), unique)
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
        manifest = snap.manifest if in_memory else self.store.read_manifest(checkpoint_id)
        groups = model_groups(self.model)
        plan = fit(manifest, groups, type(self.model).__name__)
        keep = not in_memory and self.memory_snapshot and not (snap and snap.pinned) and self._fits(
            r.nbytes for r in {r.hash: r for r in manifest.tensors}.values())
        sources = self._load(manifest, {rec.hash: rec for _g, rec in plan}.values(), transient=not keep)
        on_host = [(g, rec) for g, rec in plan if g.tensor.device.type == "cpu"]
        with untracked():
            run_all(lambda job: copy_into(job[0].tensor, sources[job[1].hash], job[1].dtype, job[1].shape), on_host)
            for group, rec in plan:
                if group.tensor.device.type != "cpu":
                    copy_into(group.tensor, sources[rec.hash], rec.dtype, rec.shape)
            sync_devices(g.tensor for g, _ in plan)
        if in_memory:
            self.disk_unchecked.add(checkpoint_id)
        else:
            self._verified[checkpoint_id] = True
            self.disk_unchecked.discard(checkpoint_id)
            if keep:
                self._snapshot = Snapshot.of(manifest, sources, pinned=False)

    def _load(self, manifest: Manifest, records, transient: bool = False) -> dict[str, torch.Tensor]:
        """Verified host bytes for `records`: held ones from memory, the rest from disk.

        `transient` (the bytes are dropped after use): read into one arena instead of a
        buffer per tensor, so huge pages back small tensors too (fresh memory costs a page
        fault per page; see tensors.new_host_buffer). Bytes that will be held get their own
        buffers, so a held tensor never keeps a dropped one's memory alive.
        """
        held = self._snapshot.by_hash if self._snapshot else {}
        sources = {r.hash: held[r.hash] for r in records if r.hash in held}
        todo = [r for r in records if r.hash not in sources]
        pin = self._pin()
        if transient:
            bufs = new_host_arena([r.nbytes for r in todo], pin)
        else:
            bufs = [new_host_buffer(r.nbytes, pin) for r in todo]

        def read(job):
            rec, buf = job
            self.store.read_blob(rec, checkpoint_id=manifest.id, into=numpy_bytes(buf))

        run_all(read, list(zip(todo, bufs)))
        sources.update((r.hash, b) for r, b in zip(todo, bufs))
        return sources

    def check_and_repair(self, checkpoint_id: str) -> dict:
        """Re-read every tensor file of a checkpoint; rewrite damaged ones from host memory.

        See engine/store/repair.py. Never touches the model. Returns {checkpoint_id, checked
        (files), repaired: [{tensor, hash, why}], damaged: [{tensor, hash, error}]}; raises
        CheckpointError if the manifest itself cannot be read.
        """
        manifest = self.store.read_manifest(check_id(checkpoint_id))
        report = check_and_repair(self.store, manifest, self._snapshot.by_hash if self._snapshot else {})
        self.disk_unchecked.discard(checkpoint_id)
        self._verified[checkpoint_id] = not report["damaged"]
        return report

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
        and verified from disk. Raises CheckpointError if the checkpoint cannot be read. A
        checkpoint larger than ``memory_budget`` is not held (nothing is; restores read disk).
        """
        check_id(checkpoint_id)
        snap = self._snapshot
        if snap is not None and snap.checkpoint_id == checkpoint_id:
            snap.pinned = True
            return
        manifest = self.store.read_manifest(checkpoint_id)
        if not self._fits(r.nbytes for r in {r.hash: r for r in manifest.tensors}.values()):
            self._snapshot = None
            return
        sources = self._load(manifest, {r.hash: r for r in manifest.tensors}.values())
        self._verified[checkpoint_id] = True
        self._snapshot = Snapshot.of(manifest, sources, pinned=True)

    def release_memory_snapshot(self) -> None:
        """Free the held snapshot; the next save (if memory_snapshot) holds its own state."""
        self._snapshot = None

    def _fits(self, sizes) -> bool:
        """Whether a state of these tensor sizes may be held in host memory (memory_budget)."""
        return self.memory_budget is None or sum(sizes) <= self.memory_budget

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
        if not self.store.delete(checkpoint_id):
            self.last_error = f"no checkpoint {checkpoint_id} in {self.checkpoint_dir}"
            return False
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
        m1 = self.store.read_manifest(check_id(checkpoint_id_1))
        m2 = self.store.read_manifest(check_id(checkpoint_id_2))
        return compare_manifests(m1, m2, self._load_one, checkpoint_id_1, checkpoint_id_2)

    def compare_with_model(self, checkpoint_id: str) -> dict:
        """Like compare_checkpoints, from a checkpoint to the live model ("current")."""
        manifest = self.store.read_manifest(check_id(checkpoint_id))
        held = self._snapshot.by_hash if self._snapshot else {}
        return compare_to_model(manifest, model_groups(self.model), held, self._load_one, checkpoint_id)

    def tensor_reader(self, checkpoint_id: str):
        """name -> that tensor's verified values in the checkpoint (any of its names; KeyError for others).

        Reads the manifest once; each call takes the bytes from the held snapshot when it has
        them (no copy, no disk read), else reads and verifies that one blob.
        """
        manifest = self.store.read_manifest(check_id(checkpoint_id))
        records = manifest.by_name()
        return lambda name: self._load_one(manifest, records[name])

    def _load_one(self, manifest: Manifest, rec: TensorRecord) -> torch.Tensor:
        """One verified tensor of `manifest`, viewed as its dtype and shape."""
        return as_tensor(self._load(manifest, [rec], transient=True)[rec.hash], rec.dtype, rec.shape)

    # ------------------------------------------------------------ export

    def export_safetensors(self, checkpoint_id: str, path: str | os.PathLike) -> Path:
        """Write the checkpoint as one standalone .safetensors file (like safetensors' save_model:
        tied names stored once, listed in the file's metadata); returns the path."""
        manifest = self.store.read_manifest(check_id(checkpoint_id))
        return write_safetensors(path, manifest, self._export_tensors(manifest))

    def export_pretrained(self, checkpoint_id: str, out_dir: str | os.PathLike) -> Path:
        """Write a Hugging Face model directory (config from the live model, the checkpoint's
        weights) that ``AutoModelForCausalLM.from_pretrained`` loads; returns the directory.

        The checkpoint must fit the live model; `out_dir` must not exist or be empty.
        """
        manifest = self.store.read_manifest(check_id(checkpoint_id))
        config = getattr(self.model, "config", None)
        if config is None or not hasattr(config, "save_pretrained"):
            raise CheckpointError(
                "export_pretrained needs a Hugging Face model (with .config); use "
                "export_safetensors for other models"
            )
        fit(manifest, model_groups(self.model), type(self.model).__name__)
        return write_pretrained(out_dir, self.model, lambda: self._export_tensors(manifest))

    def _export_tensors(self, manifest: Manifest) -> dict[str, torch.Tensor]:
        unique = {r.hash: r for r in manifest.tensors}.values()
        return export_tensors(manifest, self._load(manifest, unique, transient=True))


class AutoCheckpointer(auto_checkpoint.AutoCheckpointer):
    """The guide's AutoCheckpointer (engine/store/auto_checkpoint.py); opens its own
    CheckpointManager on `checkpoint_dir` unless given ``manager=``."""

    def open_manager(self, model: torch.nn.Module, checkpoint_dir, memory_snapshot: bool) -> CheckpointManager:
        return CheckpointManager(model, checkpoint_dir, memory_snapshot=memory_snapshot)


__all__ = [
    "AutoCheckpointer",
    "CheckpointCorrupted",
    "CheckpointError",
    "CheckpointManager",
    "CheckpointMismatch",
    "CheckpointNotFound",
    "CheckpointStorage",
    "InvalidCheckpointId",
    "MetadataTooLarge",
]
