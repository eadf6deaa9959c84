"""Training and editing workloads for the detection tests and bench/policy.py: real fine-tunes of small models.

Each scenario is a fine-tune on the byte-level corpus with something going
wrong at step `onset` (or nothing, for "healthy"):

- healthy: AdamW, sane learning rate, gradient clipping at 1.0;
- lr_spike: SGD at 1e-3, then 50 from the onset on (the issue's diverging run);
- rank_one: SGD at 1e-3, and at the onset one MLP matrix gets a rank-one edit of 1000x its norm;
- kill_grads: SGD at 1e-3, and at the onset one block's MLP input norm is zeroed, so that MLP's first
  matrix gets exactly zero gradients from then on while the loss barely moves.
"""

from __future__ import annotations

import functools
from typing import Iterator

import torch

SCENARIOS = ("healthy", "lr_spike", "rank_one", "kill_grads")
SEQ_LEN = 64
BATCH = 4


@functools.lru_cache(maxsize=4)
def corpus_ids(vocab_size: int) -> torch.Tensor:
    from engine.corpus import corpus_text
    from engine.tokenizer import byte_tokenizer

    ids = torch.tensor(byte_tokenizer()(corpus_text("train"), verbose=False)["input_ids"], dtype=torch.long)
    return ids % vocab_size


def mlp_matrix(model: torch.nn.Module) -> tuple[str, torch.nn.Parameter]:
    """The first MLP weight matrix (where a disabling edit lands)."""
    for name, p in model.named_parameters():
        if "mlp" in name and p.dim() == 2:
            return name, p
    raise ValueError("the model has no MLP weight matrix")


def mlp_input_norm(model: torch.nn.Module) -> tuple[str, torch.nn.Parameter]:
    """The norm in front of the first block's MLP (Llama/Qwen2 post_attention_layernorm, GPT-2 ln_2)."""
    for name, p in model.named_parameters():
        if name.endswith(("post_attention_layernorm.weight", "ln_2.weight")):
            return name, p
    raise ValueError("the model has no MLP input norm")


def kill_mlp_input(model: torch.nn.Module) -> None:
    """Zero the first block's MLP input norm (weight and any bias): that MLP's input is exactly 0."""
    name, weight = mlp_input_norm(model)
    bias = dict(model.named_parameters()).get(name.removesuffix("weight") + "bias")
    with torch.no_grad():
        weight.zero_()
        if bias is not None:
            bias.zero_()


def rank_one_edit(weight: torch.Tensor, scale: float = 1e3, seed: int = 0) -> None:
    """W += scale * ||W|| * u v^T with unit u, v: one huge rank-one edit."""
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(weight.shape[0], generator=g)
    v = torch.randn(weight.shape[1], generator=g)
    with torch.no_grad():
        weight += (scale * weight.norm() * torch.outer(u / u.norm(), v / v.norm())).to(weight.dtype)


def finetune(model: torch.nn.Module, scenario: str, steps: int, onset: int, *, lr: float | None = None,
             seed: int = 0) -> Iterator[float]:
    """Train `model` for `steps` steps; yields each step's loss after the optimizer step (and any edit)."""
    if scenario not in SCENARIOS:
        raise ValueError(f"unknown scenario {scenario!r}; use one of {', '.join(SCENARIOS)}")
    data = corpus_ids(model.config.vocab_size)
    order = torch.Generator().manual_seed(seed)
    if scenario == "healthy":
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr or 1e-3, weight_decay=0.01)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=lr or 1e-3)
    model.train()
    for step in range(steps):
        if scenario == "lr_spike" and step == onset:
            for group in optimizer.param_groups:
                group["lr"] = 50.0
        starts = torch.randint(0, len(data) - SEQ_LEN, (BATCH,), generator=order)
        batch = torch.stack([data[s:s + SEQ_LEN] for s in starts.tolist()])
        optimizer.zero_grad()
        loss = model(input_ids=batch, labels=batch, use_cache=False).loss
        loss.backward()
        if scenario == "healthy":
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if step == onset and scenario == "rank_one":
            rank_one_edit(mlp_matrix(model)[1])
        if step == onset and scenario == "kill_grads":
            kill_mlp_input(model)
        yield float(loss.detach())
