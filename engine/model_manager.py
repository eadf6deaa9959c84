"""Load the model Redline watches: the demo model, a local directory, or a cached hub id.

Everything happens offline: a hub id is looked up only in the local Hugging Face
cache, weights are read only from safetensors (a pickled pytorch_model.bin is
refused, never unpickled), and no remote code runs. When a model cannot be
found, the error is one paragraph that says what was looked for and how to get
it. torch and transformers are imported on first use, so importing this module
(for ModelLoadError, say) stays cheap and torch-free.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Callable

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "Qwen/Qwen2.5-3B-Instruct"
DEMO_NAME = "demo"  # engine.demo_model.DEMO_NAME, repeated to keep this module torch-free at import

Progress = Callable[[float, "float | None", str], None]

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
_PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
}  # fmt: skip
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "*.tiktoken", "tekken.json", "*.model")
_WARM_CHUNK = 16 * 1024 * 1024


class ModelLoadError(Exception):
    """A model could not be loaded; str(error) is one paragraph saying why and what to do."""


def parse_dtype(value, device) -> Any:
    """A torch.dtype from None (bf16 on CUDA, fp32 elsewhere), "auto", a name like "bf16", or a dtype."""
    import torch

    if isinstance(value, torch.dtype):
        return value
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    key = str(value).strip().lower().removeprefix("torch.")
    if key not in _DTYPE_NAMES:
        raise ValueError(
            f"unknown dtype {value!r}: use one of float32 (fp32), bfloat16 (bf16), float16 (fp16), "
            f"float64, or auto (bf16 on CUDA, fp32 on CPU)"
        )
    return getattr(torch, _DTYPE_NAMES[key])


def parse_device(value) -> Any:
    """A torch.device from None (CUDA when available, else CPU), "auto", "cpu", "cuda", "cuda:N"..."""
    import torch

    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = value if isinstance(value, torch.device) else torch.device(str(value).strip().lower())
    except (RuntimeError, ValueError):
        raise ValueError(f"unknown device {value!r}: use cpu, cuda, cuda:N (N = GPU index), mps or auto") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {value!r} asked for CUDA, but this torch ({torch.__version__}) sees no CUDA GPU; "
                f"use --device cpu, or install a CUDA build of torch on a machine with a GPU"
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ValueError(f"device {value!r} does not exist: this machine has {count} CUDA GPU(s), cuda:0..cuda:{count - 1}")
    elif device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {value!r} asked for Apple MPS, which this machine does not offer; use cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {value!r} is not supported: use cpu, cuda, cuda:N or mps")
    return device


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment now (HF_HUB_CACHE, HF_HOME, default)."""
    for env in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(env):
            return Path(os.environ[env]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def quiet_transformers_progress():
    """Silence transformers' own tqdm bars (they would draw over the console); we report progress ourselves."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _safetensors_files(directory: Path) -> list[Path]:
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
    if not _safetensors_files(directory):
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


def resolve_model_dir(name: str, progress: Progress | None = None) -> Path:
    """The local directory holding `name`: the demo model, a directory, or a hub cache snapshot."""
    if name == DEMO_NAME:
        from engine.demo_model import ensure_demo_model

        return ensure_demo_model(progress=progress)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(
                f"--model {name!r} is a file, not a model directory. Point it at the folder that holds "
                f"config.json and the *.safetensors weights (for a Hugging Face download, the snapshot folder)."
            )
        check_model_dir(path, name)
        return path.absolute()
    cache = hub_cache_dir()
    if _looks_like_path(name):
        raise ModelLoadError(
            f"No model directory at {path.absolute()}. Check the path, or pass a hub id such as "
            f"{DEFAULT_MODEL} that is already in the local Hugging Face cache ({cache}), or use --model demo."
        )
    repo_folder = cache / ("models--" + name.replace("/", "--"))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot = Path(snapshot_download(name, cache_dir=cache, local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, FileNotFoundError, OSError, ValueError):
        raise ModelLoadError(
            f"Model {name!r} was not found: there is no local directory of that name, and the Hugging Face "
            f"cache at {cache} has no snapshot of it (looked for {repo_folder}). Redline never downloads. "
            f"On a machine with network run `hf download {name}` (older huggingface_hub: `huggingface-cli "
            f"download {name}`) with HF_HUB_CACHE pointing at this cache (or copy the cache over), or pass --model PATH to a directory written by "
            f"save_pretrained, or use --model demo."
        ) from None
    check_model_dir(snapshot, name)
    return snapshot


def _failure_paragraph(name: str, directory: Path | None, exc: Exception) -> str:
    where = f"the model in {directory}" if directory is not None else f"model {name!r}"
    detail = " ".join(str(exc).split())
    if "trust_remote_code" in detail and "custom code" in detail:
        return (
            f"Loading {where} failed: it needs custom Python code shipped with the model (trust_remote_code), "
            f"which Redline never runs. Use a model whose architecture this transformers version supports natively."
        )
    return (
        f"Loading {where} failed: {type(exc).__name__}: {detail}. Check that the directory is a complete "
        f"save_pretrained output of a causal language model whose architecture this transformers version knows."
    )


class ModelManager:
    """Loads and reloads one causal language model and its tokenizer, offline.

    `device` and `dtype` accept strings ("cpu", "cuda:0", "bf16", "fp32"...) or
    torch objects; nonsense raises ValueError at construction. `progress`, if
    given, is called as progress(done, total, message) through each stage.
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, device=None, dtype=None, *, progress: Progress | None = None):
        self.model_name = str(model_name)
        self.device = parse_device(device)
        self.dtype = parse_dtype(dtype, self.device)
        self.progress = progress
        self.model = None
        self.tokenizer = None
        self.source_path: Path | None = None
        self.error: str | None = None
        self.load_seconds: float | None = None

    def _report(self, done: float, total: float | None, message: str) -> None:
        if self.progress is not None:
            self.progress(done, total, message)

    def _warm_weights(self, files: list[Path]) -> None:
        """Read the weight files once, reporting bytes, so the load that follows hits the page cache.

        Skipped when the files would not fit comfortably in free memory.
        """
        total = sum(f.stat().st_size for f in files)
        try:
            import psutil

            available = psutil.virtual_memory().available
        except Exception:
            available = 0
        if self.progress is None or total > available // 2:
            self._report(0, None, f"weights: reading {total / 1e9:.2f} GB")
            return
        done = 0
        buffer = bytearray(_WARM_CHUNK)
        for path in files:
            with open(path, "rb", buffering=0) as fh:
                while True:
                    n = fh.readinto(buffer)
                    if not n:
                        break
                    done += n
                    self._report(done, total, f"weights: {done / 1e6:.1f} / {total / 1e6:.1f} MB ({path.name})")

    def _load_from(self, directory: Path):
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        from engine.benchmarks import model_device

        self._report(0, None, f"config: {directory / 'config.json'}")
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        self._report(0, None, "tokenizer")
        missing = f"no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...)"
        tokenizer = None
        if any(next(directory.glob(pattern), None) for pattern in _TOKENIZER_FILES):
            try:
                tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
                missing = "a tokenizer with an empty vocabulary"
            except (OSError, ValueError, TypeError) as exc:
                missing = f"a tokenizer that does not load ({' '.join(str(exc).split())})"
        if tokenizer is None or len(tokenizer) < 2:
            raise ModelLoadError(
                f"The model directory {directory} has weights but {missing}. Save the tokenizer beside the "
                f"model with tokenizer.save_pretrained({str(directory)!r})."
            )
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        self._warm_weights(_safetensors_files(directory))
        self._report(0, None, f"building {type(config).__name__.removesuffix('Config')} model ({self.dtype})")
        placement = {} if self.device.type == "cpu" else {"device_map": {"": str(self.device)}}
        with quiet_transformers_progress():
            model = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=self.dtype,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,  # explicit: otherwise transformers may prompt on the terminal
                **placement,
            )
        actual = model_device(model)
        if actual.type != self.device.type or self.device.index not in (None, actual.index):
            self._report(0, None, f"moving the model to {self.device}")
            model = model.to(self.device)
        model.eval()
        if torch.cuda.is_available() and self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return model, tokenizer

    def _load(self):
        started = time.perf_counter()
        self._report(0, None, f"resolving model {self.model_name!r}")
        directory = None
        try:
            directory = resolve_model_dir(self.model_name, self.progress)
            model, tokenizer = self._load_from(directory)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(_failure_paragraph(self.model_name, directory, exc)) from None
        self.model, self.tokenizer, self.source_path = model, tokenizer, directory
        self.load_seconds = time.perf_counter() - started
        self.error = None
        self._report(1, 1, f"model ready on {self.device} ({self.dtype}) in {self.load_seconds:.2f} s")
        return model

    def load(self):
        """Load and return the model; raises ModelLoadError (one paragraph) on failure."""
        try:
            return self._load()
        except ModelLoadError as exc:
            self.error = str(exc)
            raise

    def load_model(self) -> bool:
        """Load the model; False on failure, with the paragraph in self.error (also logged at ERROR)."""
        try:
            self._load()
            return True
        except ModelLoadError as exc:
            self.error = str(exc)
            logger.error("%s", self.error)
            return False

    def reload(self) -> bool:
        """Re-read the weights from disk (the guide's Scenario 4).

        When a model is already loaded, the weights are copied into it in place,
        so every holder of the model object (checkpoint manager, monitors) sees
        the restored values and tied weights stay tied. Returns False, with
        self.error set, when the files cannot be read or no longer match.
        """
        if self.model is None:
            return self.load_model()
        import torch

        try:
            directory = resolve_model_dir(self.model_name, self.progress)
            self._report(0, None, f"reloading weights from {directory}")
            from transformers import AutoModelForCausalLM

            with quiet_transformers_progress():
                fresh = AutoModelForCausalLM.from_pretrained(
                    directory, dtype=self.dtype, use_safetensors=True, local_files_only=True, trust_remote_code=False
                )
            target = self.model.state_dict()
            source = fresh.state_dict()
            if set(target) != set(source) or any(target[k].shape != source[k].shape for k in target):
                raise ModelLoadError(
                    f"The weights in {directory} no longer match the loaded model (different parameter names "
                    f"or shapes), so they cannot be copied into it. Restart Redline to load the new model."
                )
            with torch.no_grad():
                for key, tensor in target.items():
                    tensor.copy_(source[key])
            del fresh, source
        except ModelLoadError as exc:
            self.error = str(exc)
            logger.error("%s", self.error)
            return False
        except Exception as exc:
            self.error = _failure_paragraph(self.model_name, None, exc)
            logger.error("%s", self.error)
            return False
        self.error = None
        self._report(1, 1, "weights reloaded from disk")
        return True
