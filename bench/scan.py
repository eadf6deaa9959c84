"""Health-scan speed and activation-hook overhead, against the alternatives, in one run.

Model: a Qwen2-architecture causal LM (the demo model's architecture) scaled to
~0.8 GB fp32 (24 layers, hidden 768, intermediate 2048, vocab 32000); `--quick`
uses 4 layers. Rows:

- ours: `SafetyMonitor.check_model_health` (fused scan + memory checks) and the bare
  `engine.health_scan.scan_model`.
- naive: the guide's loop, per parameter `torch.isnan(p).sum().item()`,
  `torch.isinf(p).sum().item()`, `p.abs().max().item()`.
- limit: one `torch.aminmax` per unique tensor, stacked, one `.tolist()` (reading
  every byte once; nothing can be much faster).
- hooks: a forward pass with the activation monitor attached vs without.

Timings are the best of several interleaved rounds (the machine may be shared).

    .venv/bin/python bench/scan.py [--quick] [--layers N] [--rounds N] [--threads N]

On a machine shared with other busy processes, `--threads 1` avoids the
intra-op thread pool's wake-up stalls that otherwise dominate small ops.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GOAL_VS_NAIVE = 20.0  # ours at least this many times faster than the guide's loop
GOAL_VS_LIMIT = 0.5  # ours at least half the speed of a bare aminmax pass
GOAL_HOOK_OVERHEAD = 0.05  # activation hooks add at most 5% to a forward pass


def build_model(layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=32000,
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=layers,
        num_attention_heads=12,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    # Allocate without transformers' slow per-module init, then fill: N(0, 0.02) matrices, unit norms.
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)  # its buffers are computed, not loaded
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() > 1:
                p.normal_(0.0, 0.02, generator=g)
            elif "norm" in name:
                p.fill_(1.0)
            else:
                p.zero_()
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


def naive_scan(model) -> tuple[int, int, float]:
    nan = inf = 0
    biggest = 0.0
    for p in model.parameters():
        nan += torch.isnan(p).sum().item()
        inf += torch.isinf(p).sum().item()
        biggest = max(biggest, p.abs().max().item())
    return nan, inf, biggest


def aminmax_pass(model) -> list:
    with torch.no_grad():
        pairs = [torch.aminmax(p) for p in model.parameters()]
        return torch.stack([torch.stack([p.min for p in pairs]), torch.stack([p.max for p in pairs])]).tolist()


def best_of(fns: dict, rounds: int) -> dict[str, float]:
    """Best wall time of each function over interleaved rounds (one warm-up round first)."""
    for fn in fns.values():
        fn()
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t0)
    return best


def hook_overhead(model, safety, ids, rounds: int) -> tuple[float, float]:
    """Median forward time without and with the activation monitor; order alternates per round."""

    def forward():
        with torch.no_grad():
            model(input_ids=ids)

    plain, hooked = [], []
    forward()
    for r in range(rounds):
        for with_hooks in ((False, True) if r % 2 == 0 else (True, False)):
            if with_hooks:
                safety.attach_activation_monitor(model)
            t0 = time.perf_counter()
            forward()
            (hooked if with_hooks else plain).append(time.perf_counter() - t0)
            if with_hooks:
                safety.check_model_health(model)  # resolves the hook statistics, as the engine does
                safety.detach_activation_monitor()
    return statistics.median(plain), statistics.median(hooked)


def hook_cost(model, safety, ids, reps: int) -> float:
    """Seconds the activation monitor adds per forward pass, timed directly on captured outputs.

    Robust to a noisy machine: only the hooks' own work is timed, not the forward around it.
    """
    from engine.activation_monitor import monitored_modules

    modules = monitored_modules(model)
    outputs = [None] * len(modules)
    handles = [m.register_forward_hook(lambda mod, a, out, i=i: outputs.__setitem__(i, out))
               for i, (_, m) in enumerate(modules)]
    with torch.no_grad():
        model(input_ids=ids)
    for h in handles:
        h.remove()
    safety.attach_activation_monitor(model)
    monitor = safety.activation_monitor
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        for i, out in enumerate(outputs):
            monitor.observe(i, out)
        best = min(best, time.perf_counter() - t0)
    safety.check_model_health(model)
    safety.detach_activation_monitor()
    return best


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="4 layers, fewer rounds (smoke run)")
    parser.add_argument("--layers", type=int, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = args.layers or (4 if args.quick else 24)
    rounds = args.rounds or (3 if args.quick else 5)

    from engine.health_scan import scan_model
    from engine.safety_monitor import SafetyMonitor

    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    print(f"machine: {os.cpu_count()} cores{load}, torch {torch.__version__} ({torch.get_num_threads()} threads), "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    t0 = time.perf_counter()
    model = build_model(layers)
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    print(f"model: Qwen2, {layers} layers, {sum(1 for _ in model.parameters())} unique tensors, "
          f"{nbytes / 1e9:.2f} GB fp32 (built in {time.perf_counter() - t0:.1f} s)")

    safety = SafetyMonitor()
    health = safety.check_model_health(model)
    assert (health["nan_count"], health["inf_count"]) == naive_scan(model)[:2]
    times = best_of(
        {
            "ours: check_model_health": lambda: safety.check_model_health(model),
            "ours: scan_model": lambda: scan_model(model),
            "naive: guide's per-parameter loop": lambda: naive_scan(model),
            "limit: one aminmax pass": lambda: aminmax_pass(model),
        },
        rounds,
    )
    ours = times["ours: check_model_health"]
    naive = times["naive: guide's per-parameter loop"]
    limit = times["limit: one aminmax pass"]

    print()
    print(f"{'health scan':40s} {'best ms':>10s} {'GB/s':>8s}")
    for name, seconds in times.items():
        print(f"{name:40s} {seconds * 1e3:10.1f} {nbytes / seconds / 1e9:8.2f}")
    print()
    vs_naive = naive / ours
    vs_limit = limit / ours
    print(f"{'ratio':40s} {'measured':>10s} {'goal':>8s}")
    print(f"{'ours vs naive (x faster)':40s} {vs_naive:10.1f} {'>= ' + str(GOAL_VS_NAIVE):>8s}"
          f"  {'ok' if vs_naive >= GOAL_VS_NAIVE else 'MISSED'}")
    print(f"{'ours vs aminmax limit (speed fraction)':40s} {vs_limit:10.2f} {'>= ' + str(GOAL_VS_LIMIT):>8s}"
          f"  {'ok' if vs_limit >= GOAL_VS_LIMIT else 'MISSED'}")

    ids = torch.randint(0, 32000, (1, 64) if args.quick else (1, 128), generator=torch.Generator().manual_seed(0))
    plain, hooked = hook_overhead(model, safety, ids, rounds=max(6, rounds + 3))
    overhead = hooked / plain - 1
    print()
    print(f"{'forward pass (batch ' + str(tuple(ids.shape)) + ')':40s} {'median ms':>10s}")
    print(f"{'without activation hooks':40s} {plain * 1e3:10.1f}")
    print(f"{'with activation hooks':40s} {hooked * 1e3:10.1f}")
    print(f"{'hook overhead (paired forwards)':40s} {overhead:10.1%} {'<= ' + format(GOAL_HOOK_OVERHEAD, '.0%'):>8s}"
          f"  {'ok' if overhead <= GOAL_HOOK_OVERHEAD else 'MISSED'}")
    cost = hook_cost(model, safety, ids, reps=20)
    direct = cost / plain
    print(f"{'hooks timed alone, per forward':40s} {cost * 1e3:10.2f} ms")
    print(f"{'hook overhead (hooks alone / forward)':40s} {direct:10.2%} {'<= ' + format(GOAL_HOOK_OVERHEAD, '.0%'):>8s}"
          f"  {'ok' if direct <= GOAL_HOOK_OVERHEAD else 'MISSED'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
