"""Edit transactions against plain copies, and the gate's threshold, measured in one run.

Model: the 24-layer benchmark Qwen2 of bench/checkpoints.py (`--quick`: 4 layers). Rows:

- transaction: `with journal.edit(...)` around a rank-one edit of one MLP matrix
  (down_proj, 768x2048 fp32) and the same edit without a journal, both measured; their
  difference is what the caller waits for (begin + copy-on-write + the gate's fused pass +
  handing the decided edit to the journal's writer thread), against the issue's measure, one
  `clone()` of the touched bytes. Beside it, the same against a clone plus one read of both
  versions (`torch.dot(w, copy)`): the least a gate that compares the edit with its copy does.
  The writer is idle when each timed edit starts (flushed, untimed).
- durable: the same edit waiting until the writer has hashed it, written and fsynced its
  pre-edit blob and then the journal row (`journal.flush()`), against one `clone()` plus one
  durable write (file write + fsync) of the touched bytes, measured alike
- rollback: putting a rejected edit's matrix back, vs `copy_` of the same bytes between
  preallocated tensors; and the whole rejected edit (gate included) for reference
- model size: the rejected edit on the full model against the same edit on a 4-layer one
  (nothing in the per-edit path may grow with the model)
- listing: `journal.list()` of a 10,000-edit journal
- gate: on the trained demo model, ||dW||/||W|| and the held-out perplexity after a ROME-style
  rank-one edit (one key's MLP output rewritten by `alpha` times its norm) and after
  disabling edits; the policy's limit (engine/policy.py) must separate them

Timings are the best of several rounds (the machine may be shared).

    .venv/bin/python bench/edits.py [--quick] [--rounds N] [--no-gate] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

GOAL_TRANSACTION = 2.0  # transaction / clone of the touched bytes, at most
GOAL_ROLLBACK = 1.5  # rollback / copy_ of the touched bytes, at most
GOAL_LIST_S = 0.100  # listing 10,000 edits, at most
GOAL_MODEL_SIZE = 1.5  # a per-edit cost on the full model / on a 4-layer one, at most (noise, not growth)


def best(fn, rounds: int, before=None) -> float:
    """The fastest of `rounds` calls of `fn`; `before()` runs untimed before each."""
    times = []
    for _ in range(rounds):
        if before is not None:
            before()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def rank_one(w: torch.Tensor, scale: float, g: torch.Generator) -> None:
    u = torch.randn(w.shape[0], generator=g)
    v = torch.randn(w.shape[1], generator=g)
    with torch.no_grad():
        w.addr_(u, v, alpha=scale * float(w.norm()) / float(u.norm() * v.norm()))


def transaction_rows(layers: int, rounds: int, root: Path) -> list[tuple]:
    from checkpoints import build_model

    from engine.edits import EditJournal
    from engine.edits.content import copy_tensor, write_back

    model = build_model(layers)
    journal = EditJournal(model, root / "run")
    mats = [model.model.layers[i].mlp.down_proj.weight for i in range(layers)]
    nbytes = mats[0].nbytes
    g = torch.Generator().manual_seed(0)
    counter = iter(range(10**9))

    def plain():
        rank_one(mats[next(counter) % layers], 0.01, g)

    def journaled():
        i = next(counter) % layers
        with journal.edit("bench", layer=i):
            rank_one(mats[i], 0.01, g)

    def journaled_durable():
        journaled()
        journal.flush()

    def clone():
        mats[next(counter) % layers].clone()

    before = mats[0].detach().clone()

    def clone_and_read_both():  # the least any gate does: copy the bytes, then read both versions once
        w = mats[next(counter) % layers]
        c = w.clone()
        torch.dot(w.detach().reshape(-1), c.reshape(-1))

    from engine.store.blobs import BlobFiles
    from engine.store.tensors import byte_view, numpy_bytes

    files = BlobFiles(root / "durable" / "blobs", root / "durable" / "tmp")
    (root / "durable" / "tmp").mkdir(parents=True)
    payload = numpy_bytes(byte_view(before))

    def durable_write():
        digest = f"{next(counter):064x}"
        files.write(digest, "F32", tuple(mats[0].shape), payload, durable=True)
        files.sync_dirs([digest])

    t = {k: [] for k in ("plain", "journaled", "durable_edit", "clone", "floor", "durable")}
    for _ in range(rounds):  # interleaved, so load on the machine hits all alike
        t["plain"].append(best(plain, 3))
        t["journaled"].append(best(journaled, 3, before=journal.flush))  # the writer idle at the start
        t["clone"].append(best(clone, 3))
        t["floor"].append(best(clone_and_read_both, 3))
        t["durable_edit"].append(best(journaled_durable, 3, before=journal.flush))
        t["durable"].append(best(durable_write, 3))
    m = {k: min(v) for k, v in t.items()}
    transaction, durable = m["journaled"] - m["plain"], m["durable_edit"] - m["plain"]
    print(f"edit of 1 MLP matrix: {m['journaled'] * 1e3:.2f} ms in a transaction, {m['plain'] * 1e3:.2f} ms alone "
          f"(both measured; the transaction rows are their difference); {m['durable_edit'] * 1e3:.2f} ms in a "
          f"transaction waiting for the writer; a durable write of its bytes {m['durable'] * 1e3:.2f} ms")
    rows = [("transaction, 1 MLP matrix", transaction, m["clone"], nbytes, GOAL_TRANSACTION),
            ("  vs clone + read both once", transaction, m["floor"], nbytes, None),
            ("  durable (writer flushed)", durable, m["clone"] + m["durable"], nbytes, GOAL_TRANSACTION)]

    w = mats[0]
    held = copy_tensor("w", w)
    dst, src = torch.empty_like(w), w.detach().clone()
    t_back = best(lambda: write_back(w, held), rounds * 3)
    t_copy = best(lambda: dst.copy_(src), rounds * 3)
    rows.append(("rollback, 1 MLP matrix", t_back, t_copy, nbytes, GOAL_ROLLBACK))

    t_rejected = best(lambda: reject_once(journal, w, g), rounds * 3, before=journal.flush)
    rows.append(("rejected edit incl. the edit", t_rejected, t_copy, nbytes, None))
    journal.close()
    if layers > 4:  # the same rejected edit on a 4-layer model: per-edit cost must not grow with the model
        small = build_model(4)
        w_small = small.model.layers[0].mlp.down_proj.weight
        with EditJournal(small, root / "small") as small_journal:
            t_small = best(lambda: reject_once(small_journal, w_small, g), rounds * 3, before=small_journal.flush)
        rows.append((f"rejected edit, {layers} vs 4 layers", t_rejected, t_small, nbytes, GOAL_MODEL_SIZE))
    return rows


def listing_row(root: Path, rounds: int) -> tuple:
    from engine.edits.records import COMMITTED, EDIT, JournalDB, TensorChange

    db = JournalDB(root / "listing")
    change = TensorChange("model.layers.0.mlp.down_proj.weight", "F32", (768, 2048), 6291456,
                          "a" * 64, "b" * 64, 0.1, 0.01)
    for i in range(10_000):
        db.add(EDIT, f"edit {i}", {"layer": i % 24}, COMMITTED, [], {"relative_change_limit": 0.5}, [change])
    t = best(db.list, rounds)
    assert len(db.list()) == 10_000
    db.close()
    return ("list 10,000 edits", t, GOAL_LIST_S)


def gate_rows() -> list[tuple[str, float, float]]:
    """(what, ||dW||/||W||, perplexity after / before) on the trained demo model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.benchmarks import run_benchmarks
    from engine.demo_model import ensure_demo_model

    directory = ensure_demo_model()
    model = AutoModelForCausalLM.from_pretrained(directory).eval()
    tokenizer = AutoTokenizer.from_pretrained(directory)

    def perplexity() -> float:
        return run_benchmarks(model, tokenizer, max_tokens=2048, seq_len=128)["perplexity"]

    base = perplexity()
    layer = len(model.model.layers) // 2
    mlp = model.model.layers[layer].mlp
    w = mlp.down_proj.weight
    keys = {}
    hook = mlp.down_proj.register_forward_pre_hook(lambda m, args: keys.__setitem__("k", args[0][0, -1].detach()))
    with torch.no_grad():
        model(torch.tensor([tokenizer.encode("The module defines a function that returns")]))
    hook.remove()
    k = keys["k"]
    original = w.detach().clone()
    g = torch.Generator().manual_seed(0)
    direction = torch.randn(w.shape[0], generator=g)
    rows = []
    for label, change in [
        *((f"rank-one, alpha {a:g}", ("rome", a)) for a in (0.5, 1, 2, 4, 16, 64)),
        ("matrix x 3", ("scale", 3.0)), ("matrix x 10", ("scale", 10.0)),
    ]:
        with torch.no_grad():
            w.copy_(original)
            kind, amount = change
            if kind == "rome":  # W k moves by amount * ||W k|| along `direction`, only for key k
                delta = direction / direction.norm() * amount * (original @ k).norm()
                w.add_(torch.outer(delta, k) / (k @ k))
            else:
                w.mul_(amount)
            relative = float((w - original).norm() / original.norm())
        rows.append((label, relative, perplexity() / base))
    with torch.no_grad():
        w.copy_(original)
    return rows



def reject_once(journal, w, g) -> None:
    """One edit the gate rejects (a rank-one update far over the limit), rolled back."""
    from engine.edits import EditRejected

    try:
        with journal.edit("too big"):
            rank_one(w, 5.0, g)
    except EditRejected:
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="4 layers, 2 rounds")
    parser.add_argument("--rounds", type=int)
    parser.add_argument("--no-gate", action="store_true", help="skip the gate rows (they load the demo model)")
    parser.add_argument("--threads", type=int, help="torch threads (1 on a loaded machine: a parallel region "
                                                    "waits for its slowest thread to be scheduled)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    layers = 4 if args.quick else 24
    rounds = args.rounds or (2 if args.quick else 5)
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads); model: Qwen2 {layers} layers; "
          f"best of {rounds} rounds\n")
    root = Path(tempfile.mkdtemp(prefix="redline-bench-edits-"))
    failed = []
    try:
        rows = transaction_rows(layers, rounds, root)
        print(f"{'row':<28} {'ours':>10} {'plain':>11} {'ratio':>7} {'goal':>7}")
        for name, ours, plain, nbytes, goal in rows:
            ratio = ours / plain
            verdict = "" if goal is None else ("ok" if ratio <= goal else "MISSED")
            if verdict == "MISSED":
                failed.append(name)
            goal_text = "" if goal is None else f"<={goal:g}x"
            print(f"{name:<28} {ours * 1e3:>8.2f}ms {plain * 1e3:>9.2f}ms {ratio:>6.2f}x {goal_text:>7} {verdict}"
                  f"   ({nbytes / 1e6:.1f} MB, plain {nbytes / plain / 1e9:.2f} GB/s)")
        name, t, goal = listing_row(root, rounds)
        verdict = "ok" if t <= goal else "MISSED"
        if verdict == "MISSED":
            failed.append(name)
        print(f"{name:<28} {t * 1e3:>8.1f}ms {'':>11} {'':>7} {f'<={goal * 1e3:g}ms':>7} {verdict}")
        if not args.no_gate:
            from engine.policy import EDIT_RELATIVE_CHANGE_LIMIT

            print(f"\ngate (demo model; limit ||dW||/||W|| <= {EDIT_RELATIVE_CHANGE_LIMIT:g})")
            print(f"{'edit':<22} {'|dW|/|W|':>9} {'ppl ratio':>10} {'gate':>9}")
            for label, relative, ppl in gate_rows():
                decision = "passes" if relative <= EDIT_RELATIVE_CHANGE_LIMIT else "rejects"
                print(f"{label:<22} {relative:>9.3f} {ppl:>10.3f} {decision:>9}")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if failed:
        print(f"\nmissed goals: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
