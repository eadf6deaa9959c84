"""Hostile input to the checkpoint API: ids, metadata, tensor files with lying headers, other models.

Every refusal must come before anything is written to the model or outside the checkpoint
directory, and must leave every existing checkpoint restorable.
"""

from __future__ import annotations

import json
import math
import os
import struct
from pathlib import Path

import pytest
import torch

from engine.checkpointing import CheckpointManager, InvalidCheckpointId, MetadataTooLarge
from engine.store.metadata import MAX_METADATA_BYTES
from tests.conftest import make_tiny_gpt2, make_tiny_llama, make_tiny_qwen2
from tests.reliability.helpers import changed, fingerprint, lost_checkpoints


@pytest.fixture
def saved(tmp_path):
    """A directory with two checkpoints of a tied tiny Qwen2, and what each must restore to."""
    model = make_tiny_qwen2(seed=5)
    cm = CheckpointManager(model, tmp_path / "ck", memory_snapshot=False)
    expected = {cm.save_checkpoint({"purpose": "first"}): fingerprint(model)}
    with torch.no_grad():
        model.model.layers[1].self_attn.v_proj.weight.mul_(2.0)
    expected[cm.save_checkpoint({"purpose": "second"})] = fingerprint(model)
    with torch.no_grad():
        model.model.norm.weight.add_(1.0)  # the live state matches no checkpoint
    return cm, expected


def damage(cm: CheckpointManager, before: dict[str, str], expected: dict[str, dict[str, str]]) -> int:
    """Live tensors changed since `before`, plus checkpoints in `expected` a fresh manager cannot restore exactly.

    The fresh manager restores into a model of its own, so the live state under test stays as it was.
    """
    fresh = lambda: CheckpointManager(make_tiny_qwen2(seed=11), cm.checkpoint_dir, memory_snapshot=False)  # noqa: E731
    return changed(before, cm.model) + len(lost_checkpoints(fresh, expected))


def real_id(cm: CheckpointManager) -> str:
    return cm.list_checkpoints()[-1]["id"]


def bad_ids(good: str) -> dict[str, object]:
    digits = good.split("_")[1]
    return {
        "empty": "",
        "traversal": "../../../../etc/passwd",
        "traversal after an id": f"{good}/../../../outside",
        "absolute path": "/etc/passwd",
        "absolute path to a manifest": f"/tmp/{good}.json",
        "manifest file name": f"{good}.json",
        "fullwidth digits": good.replace(digits, "".join(chr(ord(c) + 0xFEE0) for c in digits)),
        "arabic-indic digits": good.replace(digits, "".join(chr(0x0660 + int(c)) for c in digits)),
        "RTL override mark": "\u202e" + good,
        "RTL mark inside": good[:11] + "\u200f" + good[11:],
        "zero-width space": good + "\u200b",
        "NUL byte": good + "\x00",
        "NUL then traversal": good + "\x00/../../x",
        "trailing newline": good + "\n",
        "uppercase hex": good[:-8] + good[-8:].upper(),
        "cyrillic lookalike": "\u0441" + good[1:],
        "glob": "checkpoint_*",
        "very long": good + "0" * 10_000,
        "None": None,
        "int": 12,
        "bytes": good.encode(),
        "path object": Path(good),
    }


def test_bad_checkpoint_ids_are_refused_without_touching_anything(saved, tmp_path, ledger):
    cm, expected = saved
    good = real_id(cm)
    outside_before = sorted(p.name for p in tmp_path.iterdir())
    for what, bad in bad_ids(good).items():
        before = fingerprint(cm.model)
        ok = cm.restore_checkpoint(bad) is False and "not a checkpoint id" in (cm.last_error or "")
        ok &= cm.verify_checkpoint(bad) is False
        for call in (cm.get_checkpoint, cm.delete_checkpoint, cm.hold_in_memory, cm.compare_with_model,
                     lambda i: cm.compare_checkpoints(good, i),
                     lambda i: cm.export_safetensors(i, tmp_path / "export.safetensors")):
            try:
                call(bad)
                ok = False
            except InvalidCheckpointId as exc:
                ok &= "not a checkpoint id" in str(exc) and len(str(exc)) < 400
        ok &= sorted(p.name for p in tmp_path.iterdir()) == outside_before
        ledger.bad_input(f"checkpoint id: {what}", detected=ok, lost=damage(cm, before, expected))


MARKUP = "[bold red]PWNED[/bold red] [link=file:///etc/passwd]x[/link] \x1b[2J\x1b[31mred\x1b[0m \x07"


def test_odd_metadata_is_stored_faithfully(saved, ledger):
    cm, expected = saved
    cases = {
        "Rich markup and ANSI escapes": {"purpose": MARKUP, "note": "[/]" * 50},
        "unicode controls (RTL, NUL, zero-width)": {"purpose": "\u202eevil\u200b\x00end", "k\x00ey": "v"},
        "just under the size limit": {"log": "x" * (MAX_METADATA_BYTES - 20)},
        "deep nesting": {"a": json.loads("[" * 200 + "]" * 200)},
        "non-finite floats": {"nan": float("nan"), "inf": float("inf"), "ninf": float("-inf")},
        "huge integer": {"n": 10**300},
    }
    for what, meta in cases.items():
        before = fingerprint(cm.model)
        cid = cm.save_checkpoint(meta)
        back = CheckpointManager(cm.model, cm.checkpoint_dir).get_checkpoint(cid)["metadata"]
        faithful = json.dumps(back, sort_keys=True) == json.dumps(meta, sort_keys=True)
        if what == "non-finite floats":
            faithful = math.isnan(back["nan"]) and back["inf"] == math.inf and back["ninf"] == -math.inf
        expected[cid] = fingerprint(cm.model)
        ledger.bad_input(f"checkpoint metadata: {what}", detected=faithful, lost=damage(cm, before, expected))


class Unserialisable:
    pass


def test_bad_metadata_is_refused_before_anything_is_written(saved, ledger):
    cm, expected = saved
    cyclic: dict = {}
    cyclic["self"] = cyclic
    cases = {
        "over the size limit": ({"log": "x" * (MAX_METADATA_BYTES + 1)}, MetadataTooLarge, "limit"),
        "100 MB string": ({"log": "y" * (100 << 20)}, MetadataTooLarge, "limit"),
        "a tensor": ({"t": torch.zeros(3)}, TypeError, "torch.Tensor"),
        "an object": ({"o": Unserialisable()}, TypeError, "Unserialisable"),
        "a set": ({"s": {1, 2}}, TypeError, "set"),
        "bytes": ({"b": b"\x00\x01"}, TypeError, "bytes"),
        "a cycle": (cyclic, TypeError, "cycle"),
        "a tuple key": ({(1, 2): "x"}, TypeError, "tuple"),
        "not a dict": (["purpose"], TypeError, "must be a dict"),
        "a string": ("purpose", TypeError, "must be a dict"),
    }
    for what, (meta, error, words) in cases.items():
        files_before = sorted(str(p) for p in cm.checkpoint_dir.rglob("*"))
        before = fingerprint(cm.model)
        try:
            cm.save_checkpoint(meta)
            refused = False
        except error as exc:
            refused = words in str(exc)
        nothing_written = sorted(str(p) for p in cm.checkpoint_dir.rglob("*")) == files_before
        ledger.bad_input(f"checkpoint metadata: {what}", detected=refused and nothing_written,
                         lost=damage(cm, before, expected))


def _safetensors(header: dict | bytes, data: bytes, declared_len: int | None = None) -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw) if declared_len is None else declared_len) + raw + data


def hostile_files(nbytes: int, shape: list[int]) -> dict[str, bytes]:
    data = os.urandom(nbytes)
    half = nbytes // 2
    t = lambda dtype, shp, a, b: {"dtype": dtype, "shape": shp, "data_offsets": [a, b]}  # noqa: E731
    return {
        "oversized header length (2**63)": _safetensors({"tensor": t("F32", shape, 0, nbytes)}, data, 2**63 - 1),
        "header length past the end": _safetensors({"tensor": t("F32", shape, 0, nbytes)}, data, nbytes * 4),
        "header length of zero": _safetensors(b"", data, 0),
        "overlapping offsets": _safetensors(
            {"tensor": t("F32", [half // 4], 0, half), "other": t("F32", [half // 4], half // 2, half + half // 2)}, data),
        "offsets past the end": _safetensors({"tensor": t("F32", shape, 0, nbytes * 8)}, data),
        "negative shape": _safetensors({"tensor": t("F32", [-1, *shape[1:]], 0, nbytes)}, data),
        "dtype lie (F16 for F32 bytes)": _safetensors({"tensor": t("F16", [shape[0] * 2, *shape[1:]], 0, nbytes)}, data),
        "dtype lie (I64)": _safetensors({"tensor": t("I64", [nbytes // 8], 0, nbytes)}, data),
        "header not JSON": _safetensors(b"\xff\xfe{not json" * 3, data),
        "header is a JSON bomb": _safetensors(("[" * 100_000 + "]" * 100_000).encode(), data),
        "empty file": b"",
        "a pickle": b"\x80\x04\x95" + b"\x00" * 64 + b".",
    }


def test_hostile_tensor_files_are_refused_before_the_model_is_touched(saved, ledger):
    cm, expected = saved
    newest = real_id(cm)
    rec = json.loads((cm.manifest_dir / f"{newest}.json").read_text())["body"]["tensors"]
    rec = next(r for r in rec if r["name"] == "model.layers.1.self_attn.v_proj.weight")  # only `newest` has it
    blob = cm.checkpoint_dir / "blobs" / rec["hash"][:2] / f"{rec['hash']}.safetensors"
    genuine = blob.read_bytes()
    for what, content in hostile_files(rec["nbytes"], rec["shape"]).items():
        blob.write_bytes(content)
        fresh = CheckpointManager(cm.model, cm.checkpoint_dir, memory_snapshot=False)
        before = fingerprint(cm.model)
        refused = fresh.restore_checkpoint(newest) is False and "damaged" in (fresh.last_error or "")
        refused &= fresh.verify_checkpoint(newest) is False
        touched = changed(before, cm.model)
        others = {k: v for k, v in expected.items() if k != newest}
        lost = lost_checkpoints(lambda: CheckpointManager(cm.model, cm.checkpoint_dir, memory_snapshot=False), others)
        ledger.bad_input(f"tensor file with hostile header: {what}", detected=refused,
                         lost=touched + len(lost))
        blob.parent.mkdir(exist_ok=True)
        blob.write_bytes(genuine)
        os.chmod(blob, 0o600)
    assert CheckpointManager(cm.model, cm.checkpoint_dir).restore_checkpoint(newest)


def test_checkpoints_of_other_architectures_are_refused(tmp_path, ledger):
    directory = tmp_path / "ck"
    others = {
        "Llama": make_tiny_llama(),
        "GPT-2": make_tiny_gpt2(),
        "Qwen2 with 3 layers": make_tiny_qwen2(layers=3),
        "Qwen2 untied": make_tiny_qwen2(tied=False),
        "Qwen2 in float16": make_tiny_qwen2().to(torch.float16),
        "Qwen2 in bfloat16": make_tiny_qwen2().to(torch.bfloat16),
    }
    ids = {what: CheckpointManager(m, directory).save_checkpoint({"arch": what}) for what, m in others.items()}
    target = make_tiny_qwen2(seed=9)
    cm = CheckpointManager(target, directory)
    own = {cm.save_checkpoint({"arch": "own"}): fingerprint(target)}
    for what, cid in ids.items():
        before = fingerprint(target)
        refused = cm.restore_checkpoint(cid) is False and "does not fit this model" in cm.last_error
        refused &= "The model was not changed" in cm.last_error
        lost = changed(before, target)
        lost += len(lost_checkpoints(lambda: CheckpointManager(make_tiny_qwen2(seed=12), directory), own))
        ledger.bad_input(f"checkpoint of another model: {what}", detected=refused, lost=lost)
