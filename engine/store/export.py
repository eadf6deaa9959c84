"""Exports of a checkpoint to files other tools read: one .safetensors file, or a Hugging Face directory.

Both appear whole or not at all: the file through fsutil.atomic_write, the directory built
under a temp name, sealed (0600, fsynced) and renamed into place.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Callable
from pathlib import Path

import torch

from engine.fsutil import TEMP_PREFIX, atomic_write, fsync_dir, seal_directory, secure_mkdir
from engine.store.errors import CheckpointError
from engine.store.manifests import Manifest
from engine.store.tensors import as_tensor


def export_tensors(manifest: Manifest, sources: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Name -> tensor for every record; `sources` maps each hash to its verified host bytes."""
    out, used = {}, set()
    for r in manifest.tensors:
        t = as_tensor(sources[r.hash], r.dtype, r.shape)
        out[r.name] = t.clone() if r.hash in used else t  # safetensors refuses shared memory
        used.add(r.hash)
    return out


def write_safetensors(path: str | os.PathLike, manifest: Manifest, tensors: dict[str, torch.Tensor]) -> Path:
    """One standalone .safetensors file (like safetensors' save_model: tied names stored once,
    listed in the file's metadata); returns its absolute path."""
    from safetensors.torch import save_file

    target = Path(path).expanduser().absolute()
    secure_mkdir(target.parent)
    meta = {
        "format": "pt",
        "redline.checkpoint_id": manifest.id,
        "redline.aliases": json.dumps({a: r.name for r in manifest.tensors for a in r.aliases}),
        "redline.metadata": json.dumps(manifest.metadata, ensure_ascii=False),
    }
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    return target


def write_pretrained(out_dir: str | os.PathLike, model: torch.nn.Module,
                     load_tensors: Callable[[], dict[str, torch.Tensor]]) -> Path:
    """A Hugging Face model directory: the config of `model`, the weights `load_tensors()` gives;
    returns it. `out_dir` must not exist or be empty.
    """
    from safetensors.torch import save_file

    config = getattr(model, "config", None)
    target = Path(out_dir).expanduser().absolute()
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise CheckpointError(f"{target} already exists and is not an empty directory; "
                              "choose a new directory for the export")
    secure_mkdir(target.parent)
    tmp = secure_mkdir(target.parent / f"{TEMP_PREFIX}export-{secrets.token_hex(6)}")
    try:
        config.save_pretrained(tmp)
        gen = getattr(model, "generation_config", None)
        if gen is not None:
            gen.save_pretrained(tmp)
        save_file(load_tensors(), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        seal_directory(tmp)
        if target.exists():
            target.rmdir()
        os.rename(tmp, target)
    except BaseException:
        for f in tmp.iterdir():
            f.unlink()
        tmp.rmdir()
        raise
    fsync_dir(target.parent)
    return target
