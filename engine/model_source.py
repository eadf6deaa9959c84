"""Find the directory a `--model` argument names, offline and without torch.

One resolver for everyone: the console's command line checks `--model` with it
before starting anything, and the model manager loads from the directory it
returns. A name is the demo model, an existing directory, or a hub id looked up
only in the local Hugging Face cache (nothing is downloaded). Every refusal is
a ModelLoadError whose text is one paragraph saying what was looked for and how
to get it.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from engine.paths import DEMO_MODEL_NAME

DEFAULT_MODEL = "Qwen/Qwen2.5-3B-Instruct"

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


class ModelLoadError(Exception):
    """A model could not be loaded; str(error) is one paragraph saying why and what to do."""


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, HF_HOME, default)."""
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def safetensors_files(directory: Path) -> list[Path]:
    """The weight files a model directory offers, in a stable order."""
    return sorted(directory.glob("*.safetensors"))


def check_model_dir(directory: Path, name: str) -> None:
    """Raise ModelLoadError unless `directory` holds a config.json and safetensors weights."""
    if not directory.is_dir():
        raise ModelLoadError(f"{name!r} resolved to {directory}, which is not a directory.")
    entries = list(directory.iterdir())
    if not entries:
        raise ModelLoadError(
            f"The model directory {directory} is empty. Point --model at a directory written by "
            f"save_pretrained (config.json plus *.safetensors and the tokenizer files), or download one with "
            f"`hf download ORG/NAME --local-dir {directory}` on a machine with network."
        )
    if not (directory / "config.json").is_file():
        raise ModelLoadError(
            f"The model directory {directory} has no config.json, so it is not a Hugging Face model directory "
            f"(it holds: {', '.join(sorted(p.name for p in entries)[:8])}). Point --model at the folder that "
            f"save_pretrained wrote, which contains config.json and *.safetensors."
        )
    if not safetensors_files(directory):
        pickled = sorted({p.name for pattern in _PICKLED_WEIGHTS for p in directory.glob(pattern)})
        if pickled:
            raise ModelLoadError(
                f"The model directory {directory} holds weights only in pickle format ({', '.join(pickled[:4])}), "
                f"which Redline refuses to load because unpickling can run arbitrary code. Convert them once, "
                f"in a trusted environment, to safetensors: load the model with transformers and call "
                f"model.save_pretrained(DIR, safe_serialization=True), then point --model at DIR."
            )
        raise ModelLoadError(
            f"The model directory {directory} has a config.json but no *.safetensors weights. Copy the weight "
            f"files beside it, or re-save the model with model.save_pretrained(DIR)."
        )


def _looks_like_path(name: str) -> bool:
    return name.startswith(("/", ".", "~")) or "\\" in name or not _HUB_ID.match(name)


def _cached_snapshot(name: str) -> Path:
    """The snapshot of hub id `name` in the local cache (refs/main), never the network."""
    cache = hub_cache_dir()
    repo_folder = cache / ("models--" + name.replace("/", "--"))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        raise ModelLoadError(
            f"Model {name!r} was not found: there is no local directory of that name, and the Hugging Face "
            f"cache at {cache} has no snapshot of it (looked for {repo_folder}). Redline never downloads. "
            f"On a machine with network run `hf download {name}` (older huggingface_hub: `huggingface-cli "
            f"download {name}`) with HF_HUB_CACHE pointing at this cache (or copy the cache over), or pass "
            f"--model PATH to a directory written by save_pretrained, or use --model demo."
        ) from None


def locate_model_dir(name: str) -> Path | None:
    """The checked directory `name` refers to, building nothing; None for the demo model.

    Order: "demo", then an existing path, then a hub id in the local cache.
    Raises ModelLoadError when `name` is none of these or its directory is not
    a usable safetensors model directory.
    """
    if name == DEMO_MODEL_NAME:
        return None
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"--model {name!r} is a file, not a model directory. Point it at the folder that holds "
                f"config.json and the *.safetensors weights (for a Hugging Face download, the snapshot folder)."
            )
        check_model_dir(path, name)
        return path.absolute()
    if _looks_like_path(name):
        raise ModelLoadError(
            f"No model directory at {path.absolute()}. Check the path, or pass a hub id such as "
            f"{DEFAULT_MODEL} that is already in the local Hugging Face cache ({hub_cache_dir()}), "
            f"or use --model demo."
        )
    snapshot = _cached_snapshot(name)
    check_model_dir(snapshot, name)
    return snapshot
