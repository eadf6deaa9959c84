"""Where Redline keeps things: the cache (demo model) and the data directory (runs).

Both honour an environment override so tests and operators can relocate them;
otherwise they follow the platform's conventions (platformdirs). No torch here:
the console imports this module too.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import platformdirs

from engine.fsutil import secure_mkdir

APP_NAME = "redline"
CACHE_ENV = "REDLINE_CACHE_DIR"
HOME_ENV = "REDLINE_HOME"

DEMO_MODEL_NAME = "demo"  # mirrors engine.demo_model.DEMO_NAME, which imports torch

_UNSAFE_SLUG_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def _dir_from_env(env: str, fallback: str) -> Path:
    raw = os.environ.get(env, "").strip()
    path = Path(raw).expanduser() if raw else Path(fallback)
    return secure_mkdir(path.absolute())


def cache_dir() -> Path:
    """Rebuildable data (the trained demo model): $REDLINE_CACHE_DIR or the user cache dir."""
    return _dir_from_env(CACHE_ENV, platformdirs.user_cache_dir(APP_NAME))


def data_dir() -> Path:
    """Data worth keeping (run directories): $REDLINE_HOME or the user data dir."""
    return _dir_from_env(HOME_ENV, platformdirs.user_data_dir(APP_NAME))


def model_slug(model_name: str) -> str:
    """A file-name-safe, stable name for a model: a hub id keeps its words, a path gets a hash.

    Resolution order matches ModelManager: "demo", then an existing path, then a hub id.
    Two different directories that share a base name must not share a run
    directory, so a local path is suffixed with a short hash of its absolute form.
    """
    name = str(model_name).strip()
    is_demo = name == DEMO_MODEL_NAME
    looks_like_path = name.startswith(("/", ".", "~")) or "\\" in name or Path(name).expanduser().exists()
    if looks_like_path and not is_demo:
        absolute = str(Path(name).expanduser().absolute())
        digest = hashlib.sha256(absolute.encode("utf-8")).hexdigest()[:8]
        base = Path(absolute).name or "model"
        slug = f"{_UNSAFE_SLUG_CHARS.sub('-', base)}-{digest}"
    else:
        slug = _UNSAFE_SLUG_CHARS.sub("-", name.replace("/", "--"))
    slug = slug.strip(".-") or "model"
    return slug[:120]


def default_run_dir(model_name: str) -> Path:
    """data_dir()/runs/<slug>: where a run of this model keeps checkpoints, memory and alerts.

    The `runs` folder is created (0700); the run directory itself is left to its owner.
    """
    runs = data_dir() / "runs"
    secure_mkdir(runs)
    return runs / model_slug(model_name)


def resolve_run_dir(run_dir: str | os.PathLike | None, model_name: str) -> Path:
    """The run directory an engine uses: the one given, else the model's default."""
    return Path(run_dir).expanduser() if run_dir else default_run_dir(model_name)
