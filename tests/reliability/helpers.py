"""Shared pieces of the reliability suite: campaign sizes, model fingerprints, loss counting.

`lost` in the ledger is always measured, never assumed: a checkpoint counts as lost when a
fresh manager can no longer restore it to the exact bytes it was saved with, and the model
counts as damaged when any of its tensors' bytes changed where they must not have.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import blake3
import torch

FULL = bool(os.environ.get("REDLINE_FULL"))


def trials(default: int, full: int) -> int:
    """Campaign size: small in the default test run, large under `make reliability`."""
    return full if FULL else default


def fingerprint(model: torch.nn.Module) -> dict[str, str]:
    """name -> blake3 of the tensor's raw bytes (NaN-safe: bytes, not values)."""
    out = {}
    for name, t in model.state_dict().items():
        data = t.detach().contiguous().reshape(-1).view(torch.uint8).cpu().numpy()
        out[name] = blake3.blake3(data.tobytes()).hexdigest()
    return out


def changed(before: dict[str, str], model: torch.nn.Module) -> int:
    """How many tensors of `model` no longer hold the bytes `before` recorded."""
    now = fingerprint(model)
    return sum(now.get(k) != v for k, v in before.items()) + len(now.keys() - before.keys())


def lost_checkpoints(manager_factory, expected: dict[str, dict[str, str]]) -> list[str]:
    """Ids in `expected` (id -> fingerprint at save) that a fresh manager cannot restore exactly."""
    cm = manager_factory()
    lost = []
    for cid, want in expected.items():
        if not cm.restore_checkpoint(cid) or changed(want, cm.model):
            lost.append(cid)
    return lost


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def flip_random_bit(path: Path, rng: random.Random) -> int:
    """Flip one random bit of `path` in place; returns the byte offset."""
    data = bytearray(path.read_bytes())
    offset = rng.randrange(len(data))
    data[offset] ^= 1 << rng.randrange(8)
    path.write_bytes(bytes(data))
    return offset


def truncate_randomly(path: Path, rng: random.Random) -> int:
    """Cut `path` to a random shorter length (possibly 0); returns the new length."""
    size = path.stat().st_size
    keep = rng.randrange(size)
    with open(path, "r+b") as fh:
        fh.truncate(keep)
    return keep


def walk_modes(root: Path) -> list[tuple[Path, int]]:
    """Every file and directory under `root` (root included) with its permission bits."""
    out = [(root, root.stat().st_mode & 0o777)]
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            out.append((p, p.lstat().st_mode & 0o777))
    return out
