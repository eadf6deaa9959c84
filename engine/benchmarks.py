"""Quality measurements: held-out perplexity, a generation sanity check, the stored baseline.

`run_benchmarks` is the guide's diagnostic (Emergency Procedures, scenario 2):
deterministic (eval mode, no sampling, fixed text and windows), bounded by
`max_tokens`, and safe on a broken model (NaN weights give a NaN perplexity,
never an exception).
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from engine.fsutil import atomic_write_text, secure_mkdir
from engine.placement import input_device

DEFAULT_BASELINE_PATH = Path("data") / "baseline_metrics.json"
# Logits of one forward pass are capped near this many bytes, so a 150k-token vocabulary
# does not turn a batch of 8 x 256 into gigabytes.
LOGITS_BUDGET_BYTES = 256 * 1024 * 1024
# A token is rarely longer than this many characters; only this much text is tokenized.
MAX_CHARS_PER_TOKEN = 16

Progress = Callable[[float, "float | None", str], None]


def model_device(model) -> torch.device:
    """Where inputs go: the input embeddings' device (a model spread over GPUs starts there)."""
    return input_device(model)


def max_positions(model) -> int | None:
    """The longest sequence the model's config allows, if it says."""
    config = getattr(model, "config", None)
    for attr in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, attr, None)
        if isinstance(value, int) and value > 1:
            return value
    return None


def _vocab_size(model) -> int:
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    weight = getattr(output, "weight", None)
    if weight is not None:
        return int(weight.shape[0])
    return int(getattr(model.config, "vocab_size", 1) or 1)


def _exp(loss: float) -> float:
    if math.isnan(loss):
        return math.nan
    try:
        return math.exp(loss)
    except OverflowError:
        return math.inf


def _token_ids(tokenizer, text: str, max_tokens: int) -> list[int]:
    prefix = text[: (max_tokens + 1) * MAX_CHARS_PER_TOKEN]
    ids = tokenizer(prefix, add_special_tokens=False, verbose=False)["input_ids"]
    return list(ids[: max_tokens + 1])


def _windows(ids: list[int], seq_len: int) -> list[list[int]]:
    """Consecutive windows that overlap by one token, so every token after the first is predicted once."""
    step = seq_len - 1
    windows = []
    for start in range(0, len(ids) - 1, step):
        window = ids[start : start + seq_len]
        if len(window) >= 2:
            windows.append(window)
    return windows


def run_benchmarks(
    model,
    tokenizer,
    text: str | None = None,
    *,
    max_tokens: int = 8192,
    seq_len: int = 256,
    batch_size: int = 8,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Perplexity of `model` on `text` (default: the demo corpus's held-out split).

    Returns perplexity, loss (mean negative log-likelihood per predicted token,
    nats), tokens (predicted), windows, seq_len, batch_size, seconds,
    tokens_per_second, finite and text ("heldout" or "custom").
    """
    if max_tokens < 1 or seq_len < 2 or batch_size < 1:
        raise ValueError(
            f"run_benchmarks needs max_tokens >= 1, seq_len >= 2, batch_size >= 1 "
            f"(got {max_tokens}, {seq_len}, {batch_size})"
        )
    source = "custom"
    if text is None:
        from engine.corpus import corpus_text

        text, source = corpus_text("heldout"), "heldout"
    limit = max_positions(model)
    if limit is not None:
        seq_len = min(seq_len, limit)
    ids = _token_ids(tokenizer, text, max_tokens)
    if len(ids) < 2:
        raise ValueError(f"run_benchmarks needs a text of at least two tokens; this one has {len(ids)}")
    windows = _windows(ids, seq_len)
    vocab = _vocab_size(model)
    per_window = seq_len * vocab * 8  # logits in the model's dtype plus their float32 copy
    batch = max(1, min(batch_size, LOGITS_BUDGET_BYTES // max(per_window, 1)))
    device = model_device(model)

    was_training = model.training
    model.eval()
    started = time.perf_counter()
    total_nll = torch.zeros((), dtype=torch.float64, device=device)
    predicted = 0
    try:
        with torch.no_grad():
            index = 0
            while index < len(windows):
                length = len(windows[index])
                group = [w for w in windows[index : index + batch] if len(w) == length]
                inputs = torch.tensor(group, dtype=torch.long, device=device)
                logits = model(input_ids=inputs, use_cache=False).logits
                nll = F.cross_entropy(
                    logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
                    inputs[:, 1:].reshape(-1),
                    reduction="sum",
                )
                total_nll += nll.double()
                predicted += inputs.shape[0] * (length - 1)
                index += len(group)
                if progress is not None:
                    progress(index, len(windows), "benchmark: held-out perplexity")
    finally:
        model.train(was_training)
    loss = float(total_nll.item()) / predicted
    seconds = time.perf_counter() - started
    perplexity = _exp(loss)
    return {
        "perplexity": perplexity,
        "loss": loss,
        "tokens": predicted,
        "windows": len(windows),
        "seq_len": seq_len,
        "batch_size": batch,
        "seconds": seconds,
        "tokens_per_second": predicted / seconds if seconds > 0 else math.inf,
        "finite": math.isfinite(perplexity),
        "text": source,
    }


def _printable_fraction(text: str) -> float:
    if not text:
        return 0.0
    good = sum(1 for ch in text if (ch.isprintable() or ch in "\n\t") and ch != "\ufffd")
    return good / len(text)


def generation_check(model, tokenizer, prompt: str = "The ", max_new_tokens: int = 24) -> dict[str, Any]:
    """Does the model still produce text? Greedy decoding from `prompt`.

    Fails (ok False, with a reason) when generation raises, any step's logits are
    NaN/Inf, nothing is produced, one token repeats throughout, or most of the
    output is unprintable.
    """
    device = model_device(model)
    encoded = tokenizer(prompt, return_tensors="pt")
    inputs = {k: v.to(device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model.generate(
                **inputs,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=pad_id,
                output_scores=True,
                return_dict_in_generate=True,
            )
    except Exception as exc:  # a broken model may fail anywhere inside generate
        return {"ok": False, "text": "", "reason": f"generation raised {type(exc).__name__}: {exc}"}
    finally:
        model.train(was_training)

    new_ids = out.sequences[0, inputs["input_ids"].shape[1] :].tolist()
    text = tokenizer.decode(new_ids, skip_special_tokens=True)
    result = {"ok": False, "text": text, "reason": "", "new_tokens": len(new_ids)}
    if not all(bool(torch.isfinite(score).all()) for score in out.scores):
        result["reason"] = "logits contain NaN or Inf"
    elif not new_ids or not text.strip():
        result["reason"] = "no text produced"
    elif len(new_ids) >= 4 and len(set(new_ids)) == 1:
        result["reason"] = f"degenerate output: one token repeated {len(new_ids)} times"
    elif _printable_fraction(text) < 0.5:
        result["reason"] = "output is mostly unprintable"
    else:
        result["ok"] = True
        result["reason"] = "ok"
    return result


def save_baseline_metrics(metrics: dict[str, Any], path: str | Path | None = None) -> Path:
    """Store `metrics` as JSON (atomically, 0600) for later comparisons; returns the path.

    The default is data/baseline_metrics.json under the current directory, the
    guide's `data/` convention.
    """
    target = Path(path) if path is not None else DEFAULT_BASELINE_PATH
    if "perplexity" not in metrics:
        raise ValueError("baseline metrics need a 'perplexity' entry; pass the dict run_benchmarks returned")
    secure_mkdir(target.parent)
    record = dict(metrics)
    record.setdefault("saved_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    atomic_write_text(target, json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
    return target


def load_baseline_metrics(path: str | Path | None = None) -> dict[str, Any]:
    """The metrics saved by `save_baseline_metrics` (same default path)."""
    target = Path(path) if path is not None else DEFAULT_BASELINE_PATH
    try:
        raw = target.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(
            f"No baseline metrics at {target.absolute()}: save them first with "
            f"save_baseline_metrics(run_benchmarks(model, tokenizer)) while the model is in a known-good state."
        ) from None
    try:
        metrics = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(
            f"Baseline metrics at {target.absolute()} are not valid JSON ({exc}); "
            f"delete the file and save a new baseline."
        ) from None
    if not isinstance(metrics, dict) or "perplexity" not in metrics:
        raise ValueError(
            f"Baseline metrics at {target.absolute()} have no 'perplexity' entry; delete the file and save a new baseline."
        )
    return metrics
