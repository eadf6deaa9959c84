"""Load the model Redline watches: the demo model, a local directory, or a cached hub id.

Everything happens offline: a hub id is looked up only in the local Hugging Face
cache, weights are read only from safetensors (a pickled pytorch_model.bin is
refused, never unpickled), and no remote code runs. When a model cannot be
found, the error is one paragraph that says what was looked for and how to get
it; finding the directory is engine.model_source's job, shared with the
console's command line. torch and transformers are imported on first use, so
importing this module (for ModelLoadError, say) stays cheap and torch-free.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from engine.model_source import DEFAULT_MODEL, ModelLoadError, locate_model_dir, safetensors_files
from engine.transformers_progress import quiet_transformers_progress

logger = logging.getLogger(__name__)

Progress = Callable[[float, "float | None", str], None]

_DTYPE_NAMES = {
    "float32": "float32", "fp32": "float32", "f32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "f16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
    "float64": "float64", "fp64": "float64", "double": "float64",
}  # fmt: skip
_WARM_CHUNK = 16 * 1024 * 1024


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


def resolve_model_dir(name: str, progress: Progress | None = None) -> Path:
    """The local directory holding `name`: the demo model (trained on first use), a directory, or a hub cache snapshot."""
    directory = locate_model_dir(name)
    if directory is None:
        from engine.demo_model import ensure_demo_model

        return ensure_demo_model(progress=progress)
    return directory


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
    The tokenizer comes from the model directory, or from the directory
    `tokenizer` names; a model without a usable one still loads, with
    `tokenizer` None and `tokenizer_note` saying why (perplexity is then off).
    """

    def __init__(self, model_name: str = DEFAULT_MODEL, device=None, dtype=None, *, progress: Progress | None = None,
                 tokenizer: str | os.PathLike | None = None):
        self.model_name = str(model_name)
        from engine import placement

        self.spread = placement.wants_spread(device) and placement.spread_possible()  # --device auto over GPUs
        self.device = parse_device(device)  # a spread model: its first layer's device, once loaded
        self.dtype = parse_dtype(dtype, self.device)
        self.progress = progress
        self.tokenizer_path = Path(tokenizer).expanduser() if tokenizer is not None else None
        self.model = None
        self.tokenizer = None
        self.tokenizer_note: str | None = None  # why there is no tokenizer (perplexity off), when there is none
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

    def _load_tokenizer(self, directory: Path, vocab_size: int | None):
        """(tokenizer, None), or (None, note) when the model directory offers none transformers can load.

        Whether a directory holds a tokenizer is transformers' call, not a file
        list of ours (a ByT5 tokenizer is only a tokenizer_config.json). A
        tokenizer the operator named must load and fit the model, else the load fails.
        """
        from transformers import AutoTokenizer

        explicit = self.tokenizer_path
        source = explicit or directory
        if explicit is not None and not explicit.is_dir():
            raise ModelLoadError(
                f"The tokenizer directory {explicit} does not exist or is not a directory. Point --tokenizer at "
                f"a folder written by tokenizer.save_pretrained (tokenizer.json, or tokenizer_config.json and "
                f"the vocabulary files its class needs)."
            )
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True, trust_remote_code=False)
            problem = None if len(tokenizer) >= 2 else "transformers finds no vocabulary there"
        except Exception as exc:  # whatever transformers raises means: no usable tokenizer here
            tokenizer, problem = None, f"transformers cannot load one ({type(exc).__name__}: {' '.join(str(exc).split())})"
        if explicit is not None:
            if problem is None and isinstance(vocab_size, int) and len(tokenizer) > vocab_size:
                problem = f"it has {len(tokenizer)} tokens but the model's vocabulary holds only {vocab_size}"
            if problem is not None:
                raise ModelLoadError(
                    f"The tokenizer in {explicit} cannot be used for the model in {directory}: {problem}. Point "
                    f"--tokenizer at the folder holding this model's own tokenizer."
                )
        if problem is not None:
            return None, (
                f"No tokenizer for the model in {directory}: {problem}. Perplexity is off; health scans, "
                f"checkpoints and rollback still run. Pass --tokenizer PATH (a folder written by "
                f"tokenizer.save_pretrained) to measure perplexity."
            )
        if tokenizer.pad_token is None and tokenizer.eos_token is not None:
            tokenizer.pad_token = tokenizer.eos_token
        return tokenizer, None

    def _load_from(self, directory: Path):
        from transformers import AutoConfig, AutoModelForCausalLM

        from engine import placement

        self._report(0, None, f"config: {directory / 'config.json'}")
        config = AutoConfig.from_pretrained(directory, local_files_only=True, trust_remote_code=False)
        self._report(0, None, "tokenizer")
        tokenizer, note = self._load_tokenizer(directory, getattr(config, "vocab_size", None))
        self._warm_weights(safetensors_files(directory))
        self._report(0, None, f"building {type(config).__name__.removesuffix('Config')} model ({self.dtype})")
        where = placement.load_kwargs(self.device, self.spread)
        with quiet_transformers_progress():
            model = AutoModelForCausalLM.from_pretrained(
                directory,
                config=config,
                dtype=self.dtype,
                use_safetensors=True,
                local_files_only=True,
                trust_remote_code=False,  # explicit: otherwise transformers may prompt on the terminal
                **where,
            )
        if self.spread:
            self._check_spread(model)
        else:
            actual = placement.input_device(model)
            if actual.type != self.device.type or self.device.index not in (None, actual.index):
                self._report(0, None, f"moving the model to {self.device}")
                model = model.to(self.device)
        model.eval()
        placement.synchronize(model)
        return model, tokenizer, note

    def _check_spread(self, model) -> None:
        """After a `--device auto` load: refuse offloaded layers, note where the model went, aim inputs at its first layer."""
        from engine import placement

        spilled = placement.offloaded(model)
        if spilled:
            raise ModelLoadError(
                f"--device auto could not fit the model on the visible GPUs: accelerate offloaded "
                f"{len(spilled)} module(s) to host memory or disk ({', '.join(spilled[:3])}...), whose weights "
                f"Redline could neither scan nor checkpoint. Use more or larger GPUs, a smaller dtype "
                f"(--dtype bf16), or --device cpu."
            )
        self.device = placement.input_device(model)
        logger.info("--device auto: %s", placement.describe(model))
        self._report(0, None, f"spread over {placement.describe(model)}")

    def _load(self):
        started = time.perf_counter()
        self._report(0, None, f"resolving model {self.model_name!r}")
        directory = None
        try:
            directory = resolve_model_dir(self.model_name, self.progress)
            model, tokenizer, note = self._load_from(directory)
        except ModelLoadError:
            raise
        except Exception as exc:
            raise ModelLoadError(_failure_paragraph(self.model_name, directory, exc)) from None
        self.model, self.tokenizer, self.tokenizer_note, self.source_path = model, tokenizer, note, directory
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
