"""Fitting a checkpoint to a model, and the per-tensor differences between two states.

`fit` pairs each of a model's tensors with the checkpoint's record, or says in one message
everything that does not fit (names, shapes, dtypes, ties). The difference helpers build
the dicts of CheckpointManager.compare_checkpoints / compare_with_model.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from engine.store.blobs import tensor_hash
from engine.store.errors import CheckpointMismatch
from engine.store.manifests import Manifest, TensorRecord
from engine.store.tensors import TensorGroup, host_bytes, numpy_bytes, same_bytes, untracked

#: load(manifest, record) -> that tensor's verified values (dtype and shape of the record)
Load = Callable[[Manifest, TensorRecord], torch.Tensor]

_MAX_LISTED_PROBLEMS = 5


def fit(
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


def compare_manifests(m1: Manifest, m2: Manifest, load: Load, id1: str, id2: str) -> dict:
    """Differences from checkpoint m1 to m2; tensors with equal hashes are skipped unread."""
    names2 = m2.by_name()
    seen2: set[str] = set()
    diffs = []
    for rec in m1.tensors:
        other = next((names2[n] for n in rec.names if n in names2), None)
        if other is None:
            diffs.append(structural(rec, "only in checkpoint_id_1"))
            continue
        seen2.add(other.name)
        if other.hash == rec.hash:
            continue
        if other.dtype != rec.dtype or other.shape != rec.shape:
            diffs.append(structural(rec, f"{rec.dtype}{list(rec.shape)} -> "
                                         f"{other.dtype}{list(other.shape)}"))
            continue
        diffs.append(difference(rec, load(m1, rec), load(m2, other)))
    diffs += [structural(r, "only in checkpoint_id_2") for r in m2.tensors if r.name not in seen2]
    return comparison(id1, id2, diffs)


def compare_to_model(manifest: Manifest, groups: list[TensorGroup], held: dict[str, torch.Tensor],
                     load: Load, checkpoint_id: str) -> dict:
    """Differences from a checkpoint to the live model ("current"). A tensor equal to its record
    (by memcmp against `held` bytes of that hash, else by hashing) is skipped."""
    names = manifest.by_name()
    seen: set[str] = set()
    diffs = []
    with untracked():
        for g in groups:
            rec = next((names[n] for n in g.names if n in names), None)
            if rec is None:
                diffs.append(structural(record_of(g), "only in the model"))
                continue
            seen.add(rec.name)
            if rec.dtype != g.dtype_name or rec.shape != g.shape:
                diffs.append(structural(rec, f"{rec.dtype}{list(rec.shape)} -> "
                                             f"{g.dtype_name}{list(g.shape)}"))
                continue
            host, _ = host_bytes(g.tensor, False)
            if rec.hash in held:
                if same_bytes(host, held[rec.hash]):
                    continue
            elif tensor_hash(rec.dtype, rec.shape, numpy_bytes(host)) == rec.hash:
                continue
            diffs.append(difference(rec, load(manifest, rec), g.tensor.detach().cpu()))
    diffs += [structural(r, "only in the checkpoint") for r in manifest.tensors if r.name not in seen]
    return comparison(checkpoint_id, "current", diffs)


def record_of(g: TensorGroup) -> TensorRecord:
    return TensorRecord(g.name, "", g.dtype_name, g.shape, int(g.tensor.nbytes), tuple(g.names[1:]))


def structural(rec: TensorRecord, note: str) -> dict:
    return {"layer": rec.name, "change": math.inf, "relative": math.inf,
            "max_abs_change": math.inf, "aliases": list(rec.aliases), "note": note}


def difference(rec: TensorRecord, a: torch.Tensor, b: torch.Tensor) -> dict:
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


def comparison(id1: str, id2: str, diffs: list[dict]) -> dict:
    diffs.sort(key=lambda d: (not math.isnan(d["change"]), -d["change"] if not math.isnan(d["change"]) else 0))
    return {"checkpoint_id_1": id1, "checkpoint_id_2": id2,
            "num_differences": len(diffs), "differences": diffs}
