"""Checkpoint manifests: ids, the records of a checkpoint's tensors, and the manifest file format.

A manifest is one JSON file per checkpoint: ``{"format", "version", "checksum", "body"}``,
where the checksum (blake3 of the body's canonical JSON) makes any damage to it detectable.
The body names every tensor by the hash of its content (see engine/store/blobs.py) and,
since the field was added, by a fast checksum of it (`xxh3`, optional: older manifests have
none and their tensors are verified with the content hash).
"""

from __future__ import annotations

import copy
import json
import math
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

import blake3

from engine.store.errors import CheckpointCorrupted, InvalidCheckpointId
from engine.store.dtype_names import ITEMSIZE

FORMAT = "redline.checkpoint"
VERSION = 1
ID_RE = re.compile(r"checkpoint_[0-9]{8}_[0-9]{6}_[0-9a-f]{8}", re.ASCII)
HASH_RE = re.compile(r"[0-9a-f]{64}", re.ASCII)
CHECKSUM_RE = re.compile(r"[0-9a-f]{32}", re.ASCII)


@dataclass(frozen=True)
class TensorRecord:
    """One stored tensor of a manifest; `aliases` are other names for the same storage.

    `hash` (blake3) is the content address: exact identity. `xxh3` (xxh3-128 of the same
    prefix and bytes, None in older manifests) only detects damage when reading the blob.
    """

    name: str
    hash: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    aliases: tuple[str, ...] = ()
    xxh3: str | None = None

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def to_json(self) -> dict:
        out = {
            "name": self.name,
            "hash": self.hash,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "nbytes": self.nbytes,
            "aliases": list(self.aliases),
        }
        if self.xxh3 is not None:
            out["xxh3"] = self.xxh3
        return out


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
    model_config: dict | None = None  # the Hugging Face config (to_dict) of the model saved, if it has one

    def by_name(self) -> dict[str, TensorRecord]:
        """Every name (aliases included) -> its record."""
        return {n: rec for rec in self.tensors for n in rec.names}

    def listing(self, *, verified: bool | None, in_memory: bool) -> dict:
        """This checkpoint as CheckpointManager.list_checkpoints gives it (metadata copied)."""
        return {
            "id": self.id,
            "metadata": json_copy(self.metadata),
            "created": self.created,
            "timestamp": self.timestamp,
            "size_bytes": self.size_bytes,
            "new_bytes": self.new_bytes,
            "num_tensors": len(self.tensors),
            "verified": verified,
            "in_memory": in_memory,
            "model_class": self.model_class,
            "model_type": self.model_type,
        }


def json_copy(value):
    """A copy of JSON data (dicts, lists and scalars), four times faster than copy.deepcopy: every
    listing copies each checkpoint's metadata, so the caller may change it. Anything else is deep-copied."""
    kind = type(value)
    if kind is dict:
        return {k: json_copy(v) for k, v in value.items()}
    if kind is list:
        return [json_copy(v) for v in value]
    if kind in (str, int, float, bool) or value is None:
        return value
    return copy.deepcopy(value)


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


def manifest_body(now, metadata: dict, model, records: tuple[TensorRecord, ...], new_bytes: int) -> dict:
    """The body of a new checkpoint's manifest, saved at `now` (aware datetime); "id" is set at commit."""
    return {
        "id": None,
        "created": now.isoformat(),
        "timestamp": now.timestamp(),
        "metadata": metadata,
        "model_class": type(model).__name__,
        "model_type": str(getattr(getattr(model, "config", None), "model_type", "")),
        "tensors": [r.to_json() for r in records],
        "num_tensors": len(records),
        "size_bytes": sum(r.nbytes for r in records),
        "new_bytes": new_bytes,
        **({"model_config": config} if (config := model_config(model)) is not None else {}),
    }


def model_config(model) -> dict | None:
    """The model's Hugging Face config as JSON data, so an export needs no live model; None without one."""
    to_json = getattr(getattr(model, "config", None), "to_json_string", None)
    if to_json is None:
        return None
    try:
        return json.loads(to_json(use_diff=False))
    except (TypeError, ValueError):
        return None


def canonical_json(value) -> bytes:
    return json.dumps(value, sort_keys=True, ensure_ascii=True, separators=(",", ":")).encode()


def _checksum(body) -> str:
    return blake3.blake3(canonical_json(body)).hexdigest()


def manifest_bytes(body: dict) -> bytes:
    """The file contents of a manifest with this body."""
    return json.dumps(
        {"format": FORMAT, "version": VERSION, "checksum": _checksum(body), "body": body},
        ensure_ascii=False,
        indent=1,
    ).encode("utf-8")


def parse_manifest(checkpoint_id: str, raw: bytes, path: Path) -> Manifest:
    """Parse and verify the bytes of manifest file `path`; any damage is CheckpointCorrupted."""

    def damaged(why: str) -> CheckpointCorrupted:
        return CheckpointCorrupted(
            f"checkpoint {checkpoint_id}: its manifest ({path}) "
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
                xxh3=t.get("xxh3"),
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
            model_config=body["model_config"] if isinstance(body.get("model_config"), dict) else None,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise damaged(f"a field is missing or malformed ({exc})") from None
    if manifest.id != checkpoint_id:
        raise damaged(f"it names another checkpoint ({manifest.id})")
    if any(not HASH_RE.fullmatch(t.hash) for t in tensors):
        raise damaged("a tensor hash is malformed")
    if any(t.xxh3 is not None and not (isinstance(t.xxh3, str) and CHECKSUM_RE.fullmatch(t.xxh3)) for t in tensors):
        raise damaged("a tensor checksum is malformed")
    for t in tensors:  # a lie here would size buffers and misjudge good tensor files
        if t.dtype not in ITEMSIZE:
            raise damaged(f"tensor {t.name!r} has an unknown dtype {t.dtype!r}")
        if any(s < 0 for s in t.shape) or t.nbytes != ITEMSIZE[t.dtype] * math.prod(t.shape):
            raise damaged(f"tensor {t.name!r} claims {t.nbytes} bytes for {t.dtype}{list(t.shape)}")
    return manifest
