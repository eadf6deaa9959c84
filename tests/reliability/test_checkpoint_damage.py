"""Bit flips and truncation in every file of a checkpoint directory, at random places.

Each trial damages one file of a copy of a three-checkpoint directory, then a fresh
manager must (1) refuse every checkpoint that uses the damaged file with a message naming
it, before writing anything to the model, and (2) still restore every other checkpoint
exactly. `lost` counts model tensors changed by a refused restore plus undamaged
checkpoints that no longer restore exactly.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch

from engine.checkpointing import CheckpointManager
from tests.conftest import make_tiny_qwen2
from tests.reliability.helpers import (
    changed,
    copy_dir,
    fingerprint,
    flip_random_bit,
    lost_checkpoints,
    trials,
    truncate_randomly,
)

DAMAGE = ["tensor file: bit flip", "tensor file: truncation", "manifest: bit flip", "manifest: truncation"]


@pytest.fixture(scope="module")
def template(tmp_path_factory) -> tuple[Path, dict[str, dict[str, str]]]:
    """Three checkpoints of a tied tiny Qwen2 that share some tensor files and not others."""
    root = tmp_path_factory.mktemp("template") / "checkpoints"
    model = make_tiny_qwen2(seed=3)
    cm = CheckpointManager(model, root)
    saved = {}
    for step in range(3):
        with torch.no_grad():
            model.model.layers[step % 2].mlp.down_proj.weight.mul_(1.5)
            model.model.embed_tokens.weight[step].add_(0.25)  # the tied tensor changes every time
        saved[cm.save_checkpoint({"step": step})] = fingerprint(model)
    return root, saved


def users_of(directory: Path, target: Path) -> set[str]:
    """Checkpoint ids whose manifest is `target` or names the tensor file `target`."""
    if target.parent.name == "manifests":
        return {target.stem}
    digest = target.name.removesuffix(".safetensors")
    users = set()
    for manifest in (directory / "manifests").glob("*.json"):
        body = json.loads(manifest.read_text())["body"]
        if any(t["hash"] == digest for t in body["tensors"]):
            users.add(manifest.stem)
    return users


def harmless(original: bytes, damaged: Path) -> bool:
    """A manifest flip that leaves the parsed JSON identical (e.g. 'e' <-> 'E' in a float)."""
    try:
        return json.loads(damaged.read_bytes().decode("utf-8")) == json.loads(original.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return False


@pytest.mark.slow
@pytest.mark.parametrize("damage", DAMAGE)
def test_random_damage_is_refused_and_costs_only_the_checkpoints_using_that_file(
    template, tmp_path, ledger, damage
):
    root, saved = template
    rng = random.Random(f"damage-{damage}")
    model = make_tiny_qwen2(seed=11)  # a state unlike every checkpoint: any write would show
    skipped = 0
    for trial in range(trials(8, 150)):
        directory = copy_dir(root, tmp_path / f"t{trial}")
        files = sorted((directory / ("manifests" if damage.startswith("manifest") else "blobs")).rglob("*.*"))
        target = rng.choice(files)
        original = target.read_bytes()
        if damage.endswith("bit flip"):
            flip_random_bit(target, rng)
        else:
            truncate_randomly(target, rng)
        if damage.startswith("manifest") and harmless(original, target):
            skipped += 1
            continue
        victims = users_of(directory, target)
        cm = CheckpointManager(model, directory, memory_snapshot=False)
        before = fingerprint(model)
        detected = True
        for cid in sorted(victims):
            refused = cm.restore_checkpoint(cid) is False
            message = cm.last_error or ""
            detected &= refused and cid in message and ("damaged" in message or "missing" in message)
        if damage.startswith("manifest"):
            detected &= [d["id"] for d in cm.damaged_checkpoints()] == sorted(victims)
            detected &= not set(victims) & {c["id"] for c in cm.list_checkpoints()}
        touched = changed(before, model)
        rest = {cid: fp for cid, fp in saved.items() if cid not in victims}
        lost = lost_checkpoints(lambda: CheckpointManager(model, directory, memory_snapshot=False), rest)
        ledger.fault(f"checkpoint {damage}", detected=detected, lost=touched + len(lost))
    assert skipped < trials(8, 150) // 2


def test_garbage_in_tmp_and_stray_names_are_cleaned_or_ignored(template, tmp_path, ledger):
    root, saved = template
    directory = copy_dir(root, tmp_path / "run")
    (directory / "tmp" / ".tmp-crashed-save").write_bytes(b"\x00" * 1000)
    (directory / "tmp" / "random-junk").write_bytes(b"junk")
    (directory / "manifests" / "checkpoint_junk.json").write_text("{")
    (directory / "manifests" / "README").write_text("not a manifest")
    (directory / "blobs" / "zz").mkdir()
    model = make_tiny_qwen2(seed=11)
    cm = CheckpointManager(model, directory)
    cleaned = list((directory / "tmp").iterdir()) == []
    listed = [c["id"] for c in cm.list_checkpoints()] == list(saved)
    ledger.fault("checkpoint dir: crash leftovers and stray files", detected=cleaned and listed,
                 lost=len(lost_checkpoints(lambda: CheckpointManager(model, directory), saved)))
