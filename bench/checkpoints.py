"""Checkpoint speed against plain safetensors, measured side by side in one run.

Model: a Qwen2-architecture causal LM (tied embeddings) scaled to ~0.8 GB fp32 (24 layers,
hidden 768, intermediate 2048, vocab 32000); `--quick` uses 4 layers. Every tensor is
filled with distinct random values, so no saving comes from equal tensors. Rows:

- incremental: our save after changing 1 layer vs `safetensors.torch.save_model` (whole
  model, no fsync), with durable=False and with the default durable=True; and the first
  save of a freshly opened manager (nothing held in memory, nothing proven: every tensor
  hashed, every reused file read back and compared, see engine/store/blobs.py)
- first save: our first checkpoint into an empty directory (hashing and the memory snapshot
  included) vs `safetensors.torch.save_file` of the same tensors, as throughput; once
  without fsync on either side (durable=False) and once with (ours fsyncs every file and
  directory, save_file gets one fsync of its file)
- memory rollback: restore of the checkpoint held in host memory vs a plain `copy_` of the
  same bytes from preallocated tensors, as bandwidth
- disk restore: restore with every tensor verified vs `safetensors.torch.load_model`
- hashing: blake3 (ours) vs hashlib.sha256 over the model's bytes (one warm-up pass each, then
  best of the same rounds); xxh3-128 (restore's damage check) vs sha256 likewise
- watching: a forward pass inside `with AutoCheckpointer(...)` vs without

Timings are the best of several interleaved rounds (the machine may be shared).

    .venv/bin/python bench/checkpoints.py [--quick] [--layers N] [--rounds N] [--dir PATH]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

GOAL_INCREMENTAL = 0.1  # our time / save_model time, at most
GOAL_FIRST = 0.8  # our throughput / save_file throughput, at least
GOAL_MEMORY = 0.5  # our bandwidth / copy_ bandwidth, at least
GOAL_DISK = 1.0  # our speed / load_model speed, at least


def build_model(layers: int):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=layers,
        num_attention_heads=12, num_key_value_heads=4, max_position_embeddings=512,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = Qwen2ForCausalLM(config)
    model.to_empty(device="cpu")
    model.tie_weights()
    model.model.rotary_emb = type(model.model.rotary_emb)(config=config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    return model.eval()


def best(fn, rounds: int, setup=None) -> float:
    times = []
    for _ in range(rounds):
        if setup:
            setup()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def unique_state(model) -> dict[str, torch.Tensor]:
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        if t.untyped_storage().data_ptr() not in seen:
            seen.add(t.untyped_storage().data_ptr())
            out[name] = t
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, 2 rounds")
    parser.add_argument("--layers", type=int)
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--dir", help="where to write (default: a temp dir, removed after)")
    args = parser.parse_args(argv)
    layers = args.layers or (4 if args.quick else 24)
    rounds = args.rounds or (2 if args.quick else 3)

    from safetensors.torch import load_model, save_file, save_model

    from engine.checkpointing import AutoCheckpointer, CheckpointManager

    model = build_model(layers)
    state = unique_state(model)
    nbytes = sum(t.nbytes for t in state.values())
    print(f"machine: {os.cpu_count()} cores, torch {torch.__version__}, "
          f"cuda {'yes' if torch.cuda.is_available() else 'no'}")
    print(f"model: Qwen2, {layers} layers, {nbytes / 1e9:.2f} GB fp32 unique, "
          f"{len(state)} tensors; best of {rounds} rounds\n")

    root = Path(args.dir or tempfile.mkdtemp(prefix="redline-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        # -- first full save vs save_file (each round into a fresh place)
        counter = iter(range(10**6))
        dirs: list[Path] = []

        def fresh_dir():
            for d in dirs:
                shutil.rmtree(d, ignore_errors=True)
            dirs[:] = [root / f"first{next(counter)}"]

        def first_save(**kw):
            return lambda: CheckpointManager(model, dirs[0], **kw).save_checkpoint()

        files: list[Path] = []

        def fresh_file():
            for f in files:
                f.unlink(missing_ok=True)
            files[:] = [root / f"plain{next(counter)}.safetensors"]

        def save_file_synced():
            save_file(state, str(files[0]))
            fd = os.open(files[0], os.O_RDONLY)
            os.fsync(fd)
            os.close(fd)

        t_first_fast = best(first_save(durable=False), rounds, fresh_dir)
        t_save_file = best(lambda: save_file(state, str(files[0])), rounds, fresh_file)
        t_first = best(first_save(), rounds, fresh_dir)
        t_save_file_sync = best(save_file_synced, rounds, fresh_file)
        t_first_nosnap = best(first_save(memory_snapshot=False), rounds, fresh_dir)
        gbs = lambda t: f"{nbytes / t / 1e9:.2f} GB/s"  # noqa: E731
        rows.append(("first save, no fsync", gbs(t_first_fast), gbs(t_save_file),
                     t_save_file / t_first_fast, f">= {GOAL_FIRST}",
                     t_save_file / t_first_fast >= GOAL_FIRST))
        rows.append(("first save, durable (fsync both)", gbs(t_first), gbs(t_save_file_sync),
                     t_save_file_sync / t_first, f">= {GOAL_FIRST}",
                     t_save_file_sync / t_first >= GOAL_FIRST))
        rows.append(("  durable, no memory snapshot", gbs(t_first_nosnap), gbs(t_save_file_sync),
                     t_save_file_sync / t_first_nosnap, "", None))

        # -- incremental: one layer changed vs save_model of the whole model
        cm = CheckpointManager(model, root / "main")
        cm.save_checkpoint()
        layer = model.model.layers[layers // 2]

        def change_one_layer():
            with torch.no_grad():
                for p in layer.parameters():
                    p.mul_(1.0001)

        fast = CheckpointManager(model, root / "main", durable=False)
        fast.save_checkpoint()
        t_incr_fast = best(fast.save_checkpoint, rounds, change_one_layer)
        t_incr = best(cm.save_checkpoint, rounds, change_one_layer)
        plain = root / "plain.safetensors"
        t_save_model = best(lambda: save_model(model, str(plain)), rounds)
        ms = lambda t: f"{t * 1e3:.0f} ms"  # noqa: E731
        rows.append(("incremental (1 layer), no fsync", ms(t_incr_fast), ms(t_save_model),
                     t_incr_fast / t_save_model, f"<= {GOAL_INCREMENTAL}",
                     t_incr_fast / t_save_model <= GOAL_INCREMENTAL))
        rows.append(("incremental (1 layer), durable", ms(t_incr), ms(t_save_model),
                     t_incr / t_save_model, f"<= {GOAL_INCREMENTAL}",
                     t_incr / t_save_model <= GOAL_INCREMENTAL))
        reopened: list = []

        def reopen_and_change():
            change_one_layer()
            reopened[:] = [CheckpointManager(model, root / "main", durable=False)]

        t_reopen = best(lambda: reopened[0].save_checkpoint(), rounds, reopen_and_change)
        rows.append(("  first save after reopening", ms(t_reopen), ms(t_save_model),
                     t_reopen / t_save_model, "", None))
        del fast, reopened

        # -- rollback from memory vs copy_ of the same bytes
        held = cm.save_checkpoint()
        assert cm.memory_snapshot_id == held
        copies = {name: t.clone() for name, t in state.items()}
        live = dict(state)

        def plain_copy():
            with torch.no_grad():
                for name, t in live.items():
                    t.copy_(copies[name])

        t_mem = best(lambda: cm.restore_checkpoint(held), rounds, change_one_layer)
        t_copy = best(plain_copy, rounds)
        rows.append(("memory rollback", f"{nbytes / t_mem / 1e9:.2f} GB/s",
                     f"{nbytes / t_copy / 1e9:.2f} GB/s", t_copy / t_mem,
                     f">= {GOAL_MEMORY}", t_copy / t_mem >= GOAL_MEMORY))
        del copies

        # -- restore from disk, verified, vs load_model
        disk = CheckpointManager(model, root / "main", memory_snapshot=False)
        t_disk = best(lambda: _ok(disk.restore_checkpoint(held), disk), rounds, change_one_layer)
        t_load = best(lambda: load_model(model, str(plain)), rounds)
        rows.append(("disk restore (verified)", f"{t_disk * 1e3:.0f} ms",
                     f"{t_load * 1e3:.0f} ms", t_load / t_disk,
                     f">= {GOAL_DISK}", t_load / t_disk >= GOAL_DISK))

        # -- hashing
        views = [t.reshape(-1).view(torch.uint8).numpy() for t in state.values()]
        from engine.store.blobs import tensor_checksum, tensor_hash

        def hash_blake3():
            return [tensor_hash("U8", (v.size,), v) for v in views]

        def checksum_xxh3():
            return [tensor_checksum("U8", (v.size,), v) for v in views]

        def hash_sha256():
            return [hashlib.sha256(v).digest() for v in views]

        hash_blake3(), checksum_xxh3(), hash_sha256()  # the same warm-up pass on each side
        t_b3 = best(hash_blake3, rounds)
        t_xx = best(checksum_xxh3, rounds)
        t_sha = best(hash_sha256, rounds)
        rows.append(("hash: blake3 vs sha256", f"{nbytes / t_b3 / 1e9:.2f} GB/s",
                     f"{nbytes / t_sha / 1e9:.2f} GB/s", t_sha / t_b3, "", None))
        rows.append(("checksum: xxh3-128 vs sha256", f"{nbytes / t_xx / 1e9:.2f} GB/s",
                     f"{nbytes / t_sha / 1e9:.2f} GB/s", t_sha / t_xx, "", None))

        # -- AutoCheckpointer's watching overhead on a forward pass
        ids = torch.randint(0, 32000, (1, 128))
        auto = AutoCheckpointer(model, root / "auto", frequency=10**9)

        def forward():
            with torch.no_grad():
                model(ids)

        forward()
        t_plain_fwd = best(forward, rounds + 2)

        def watched():
            with auto:
                forward()

        t_watched = best(watched, rounds + 2)
        rows.append(("forward inside AutoCheckpointer", f"{t_watched * 1e3:.1f} ms",
                     f"{t_plain_fwd * 1e3:.1f} ms", t_watched / t_plain_fwd, "", None))
    finally:
        if not args.dir:
            shutil.rmtree(root, ignore_errors=True)

    print(f"{'measure':34} {'ours':>12} {'alternative':>12} {'ratio':>7}  {'goal':>7}  met")
    for name, ours, alt, ratio, goal, met in rows:
        flag = "" if met is None else ("yes" if met else "NO")
        print(f"{name:34} {ours:>12} {alt:>12} {ratio:>7.3f}  {goal:>7}  {flag}")
    print("\nratios: incremental = our time / save_model time; the others = ours / alternative "
          "in speed (higher is better); watching = time with / time without")
    return 0


def _ok(ok: bool, cm) -> None:
    if not ok:
        raise SystemExit(f"restore failed: {cm.last_error}")


if __name__ == "__main__":
    raise SystemExit(main())
