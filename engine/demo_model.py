"""The embedded default model: a small tied-embedding Qwen2 trained on Python's own docs.

No weights can be downloaded, yet perplexity must mean something and a damaging
change must visibly raise it. So on first use we train a byte-level Qwen2 (with
tie_word_embeddings=True, the hazard the guide is about) on
`corpus_text("train")` for a fixed number of steps (about half a minute on one
CPU core), and cache it under the user's cache directory keyed by
DEMO_VERSION. Later starts load it from there.

Training is deterministic for a seed on a given CPU type and torch version:
fixed seed, fixed data order, fixed step count, one thread. The `max_seconds`
guard may stop it early on a slow machine; the report then says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from engine.benchmarks import run_benchmarks
from engine.corpus import corpus_text
from engine.fsutil import FILE_MODE, TEMP_PREFIX, atomic_write_text, fsync_dir, seal_directory, secure_mkdir
from engine.paths import cache_dir
from engine.tokenizer import EOS_TOKEN_ID, PAD_TOKEN_ID, VOCAB_SIZE, byte_tokenizer
from engine.transformers_progress import quiet_transformers_progress

DEMO_NAME = "demo"
DEMO_VERSION = "1"  # bump when the architecture, the data or the training recipe changes

CONTEXT = 128
TRAIN_STEPS = 360
BATCH_SIZE = 4
LEARNING_RATE = 1.5e-3
MIN_LR_FRACTION = 0.1
WARMUP_STEPS = 20
GRAD_CLIP = 1.0
DEFAULT_MAX_SECONDS = 55.0
# One thread: a model this small gains little from more, a busy machine makes several
# threads spin (ten times slower measured with two threads on two loaded cores), and a
# fixed thread count keeps the floating-point result independent of the core count.
TRAIN_THREADS = 1
EVAL_TOKENS = 8192

REPORT_FILE = "training_report.json"
_REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json", REPORT_FILE)
_STALE_TEMP_SECONDS = 3600

Progress = Callable[[float, "float | None", str], None]


def demo_config() -> Qwen2Config:
    """4 layers, hidden 128, tied embeddings, byte vocabulary (258 used of 264), context 128."""
    return Qwen2Config(
        vocab_size=-(-VOCAB_SIZE // 8) * 8,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=CONTEXT,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=EOS_TOKEN_ID,
        pad_token_id=PAD_TOKEN_ID,
    )


def demo_model_dir(seed: int = 0) -> Path:
    """Where the trained demo model lives: cache_dir()/demo-model-v<VERSION> (seed 0)."""
    suffix = "" if seed == 0 else f"-seed{seed}"
    return cache_dir() / f"demo-model-v{DEMO_VERSION}{suffix}"


def _learning_rate(step: int, steps: int) -> float:
    if step < WARMUP_STEPS:
        return LEARNING_RATE * (step + 1) / WARMUP_STEPS
    progress = (step - WARMUP_STEPS) / max(1, steps - WARMUP_STEPS)
    cosine = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return LEARNING_RATE * (MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * cosine)


def train_demo_model(
    seed: int = 0,
    progress: Progress | None = None,
    max_seconds: float = DEFAULT_MAX_SECONDS,
    steps: int | None = None,
    eval_tokens: int = EVAL_TOKENS,
) -> tuple[Qwen2ForCausalLM, Any, dict[str, Any]]:
    """Train a fresh demo model in memory; returns (model in eval mode, tokenizer, report).

    `steps` defaults to TRAIN_STEPS; perplexity before and after is measured on
    `eval_tokens` held-out tokens.
    """
    steps = TRAIN_STEPS if steps is None else steps
    threads = torch.get_num_threads()
    torch.set_num_threads(TRAIN_THREADS)
    try:
        return _train(seed, progress, max_seconds, steps, eval_tokens)
    finally:
        torch.set_num_threads(threads)


def _train(seed: int, progress: Progress | None, max_seconds: float, steps: int, eval_tokens: int):
    started = time.perf_counter()
    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(demo_config())
    tokenizer = byte_tokenizer(model_max_length=CONTEXT)
    data = torch.tensor(tokenizer(corpus_text("train"), verbose=False)["input_ids"], dtype=torch.long)

    if progress is not None:
        progress(0, steps, "demo model: measuring the untrained model")
    before = run_benchmarks(model, tokenizer, max_tokens=eval_tokens)

    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), weight_decay=0.01)
    order = torch.Generator().manual_seed(seed)
    model.train()
    step, loss_value, stopped_early = 0, math.nan, False
    train_started = time.perf_counter()
    while step < steps:
        if time.perf_counter() - train_started > max_seconds:
            stopped_early = True
            break
        starts = torch.randint(0, len(data) - CONTEXT, (BATCH_SIZE,), generator=order)
        batch = torch.stack([data[s : s + CONTEXT] for s in starts.tolist()])
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(step, steps)
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        loss_value = float(loss.detach())
        if progress is not None and (step % 10 == 0 or step == steps):
            progress(step, steps, f"demo model: training step {step}/{steps}, loss {loss_value:.2f}")
    train_seconds = time.perf_counter() - train_started
    model.eval()

    if progress is not None:
        progress(step, steps, "demo model: measuring the trained model")
    after = run_benchmarks(model, tokenizer, max_tokens=eval_tokens)
    report = {
        "name": DEMO_NAME,
        "version": DEMO_VERSION,
        "seed": seed,
        "steps": step,
        "steps_planned": steps,
        "stopped_early": stopped_early,
        "max_seconds": max_seconds,
        "train_seconds": round(train_seconds, 3),
        "seconds": round(time.perf_counter() - started, 3),
        "batch_size": BATCH_SIZE,
        "context": CONTEXT,
        "tokens_seen": step * BATCH_SIZE * CONTEXT,
        "train_bytes": int(data.numel()),
        "final_train_loss": loss_value,
        "perplexity_before": before["perplexity"],
        "perplexity_after": after["perplexity"],
        "eval_tokens": after["tokens"],
        "parameters": sum(p.numel() for p in model.parameters()),
        "torch_version": torch.__version__,
        "threads": TRAIN_THREADS,
        "deterministic": "for a seed on a given CPU type and torch version",
    }
    return model, tokenizer, report


def read_report(model_dir: str | os.PathLike | None = None) -> dict[str, Any]:
    """The training report saved beside a demo model."""
    directory = Path(model_dir) if model_dir is not None else demo_model_dir()
    return json.loads((directory / REPORT_FILE).read_text(encoding="utf-8"))


def is_complete(model_dir: Path) -> bool:
    """True when `model_dir` holds every file of a saved demo model and a readable report."""
    if not all((model_dir / name).is_file() for name in _REQUIRED_FILES):
        return False
    try:
        report = read_report(model_dir)
    except (OSError, ValueError):
        return False
    return report.get("version") == DEMO_VERSION


def save_demo_model(model, tokenizer, report: dict[str, Any], directory: Path) -> None:
    """Write model (safetensors), tokenizer and report into `directory`; files 0600, synced."""
    with quiet_transformers_progress():
        model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    atomic_write_text(directory / REPORT_FILE, json.dumps(report, indent=2, sort_keys=True) + "\n")
    seal_directory(directory)


@contextlib.contextmanager
def _creation_lock(lock_path: Path, progress: Progress | None) -> Iterator[None]:
    """Serialise demo-model creation between processes, so only one of them trains."""
    try:
        import fcntl
    except ImportError:  # no flock: racing processes both train; the atomic rename keeps one result
        yield
        return
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, FILE_MODE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if progress is not None:
                progress(0, None, "demo model: waiting for another process that is training it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _remove_stale_temps(parent: Path, prefix: str) -> None:
    now = time.time()
    for path in parent.glob(prefix + "*"):
        try:
            if now - path.stat().st_mtime > _STALE_TEMP_SECONDS:
                shutil.rmtree(path, ignore_errors=True)
        except FileNotFoundError:
            pass


def ensure_demo_model(progress: Progress | None = None, seed: int = 0) -> Path:
    """The directory of the trained demo model, training and saving it first if needed.

    The model is built in a temporary directory and renamed into place, so a
    crash never leaves a half-written model; a lock file makes concurrent
    processes wait for one training run instead of repeating it.
    """
    final = demo_model_dir(seed)
    if is_complete(final):
        return final
    parent = secure_mkdir(final.parent)
    temp_prefix = f"{TEMP_PREFIX}{final.name}-"
    with _creation_lock(parent / f".{final.name}.lock", progress):
        if is_complete(final):
            return final
        _remove_stale_temps(parent, temp_prefix)
        if final.exists():  # incomplete or from an older layout: set aside, then rebuild
            broken = Path(tempfile.mkdtemp(prefix=temp_prefix, dir=parent))
            os.replace(final, broken / "broken")
            shutil.rmtree(broken, ignore_errors=True)
        building = Path(tempfile.mkdtemp(prefix=temp_prefix, dir=parent))
        try:
            model, tokenizer, report = train_demo_model(seed=seed, progress=progress)
            save_demo_model(model, tokenizer, report, building)
            try:
                os.rename(building, final)
            except OSError:
                if not is_complete(final):
                    raise
                shutil.rmtree(building, ignore_errors=True)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(building, ignore_errors=True)
            raise
    if progress is not None:
        progress(1, 1, f"demo model ready in {final}")
    return final
