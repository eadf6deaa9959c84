"""What supervising a training loop costs, measured in one run against the same loop unsupervised.

Model: a Qwen2 built from a config (`--layers`, default 4; hidden 256), SGD on a fixed batch.
Rows, each the best of `--rounds` interleaved rounds of `--steps` steps (the machine may be
shared; one torch thread):

- bare: the loop alone (forward, backward, optimizer step)
- hooks: the same loop inside `with supervise(...)` without ctx.step(): the stop hooks on every
  module, the activation monitor's forward hooks
- step: the loop with `ctx.step("train", loss=loss)` every step: health scan, detection rules,
  command point (automatic checkpoints off, so the row is the per-step check, not the save)

    .venv/bin/python bench/supervise.py [--steps N] [--rounds N] [--layers N]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402


def build(layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(vocab_size=1000, hidden_size=256, intermediate_size=768, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return Qwen2ForCausalLM(config).train()


def loop(model, optimizer, ids, steps: int, ctx=None) -> float:
    started = time.perf_counter()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if ctx is not None:
            ctx.step("train", loss=loss)
    return (time.perf_counter() - started) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--quick", action="store_true", help="5 steps, 2 rounds (a smoke run)")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds = min(args.steps, 5), min(args.rounds, 2)
    torch.set_num_threads(1)  # steadier on a shared machine; the ratio is what counts
    os.environ.setdefault("XDG_RUNTIME_DIR", tempfile.mkdtemp(prefix="redline-bench-"))
    from engine.supervise import supervise

    model = build(args.layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 1000, (4, 64), generator=torch.Generator().manual_seed(0))
    loop(model, optimizer, ids, 2)  # warm up
    best = {"bare": float("inf"), "hooks": float("inf"), "step": float("inf")}
    for _ in range(args.rounds):  # interleaved, so a busy moment of the machine hits every row alike
        best["bare"] = min(best["bare"], loop(model, optimizer, ids, args.steps))
        with tempfile.TemporaryDirectory() as run_dir:
            with supervise(model, run_dir=Path(run_dir), name="bench", auto_checkpoint_every=0,
                           evaluate_every=0) as ctx:
                best["hooks"] = min(best["hooks"], loop(model, optimizer, ids, args.steps))
                best["step"] = min(best["step"], loop(model, optimizer, ids, args.steps, ctx))
    bare = best["bare"]
    print(f"{'row':<6} {'ms/step':>9} {'vs bare':>8}")
    for row, seconds in best.items():
        print(f"{row:<6} {seconds * 1000:>9.1f} {seconds / bare:>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
