"""`diff A B`: how much each tensor changed from checkpoint A to B, largest change first.

Tensors with equal content hashes are skipped unread; the others are read (verified) from
disk and compared in float64: L2 norm of the change, relative to A's norm, largest element.
"""

from __future__ import annotations

import math

from engine.checkpoints_cli.failures import EXIT_DAMAGED, CommandFailed
from engine.checkpoints_cli.output import emit, printable, table
from engine.checkpoints_cli.progress import ProgressBar
from engine.checkpoints_cli.run_store import check_ids, read_manifest
from engine.store.errors import CheckpointCorrupted
from engine.store.manifests import Manifest, TensorRecord
from engine.store.store import CheckpointStore


def diff_command(store: CheckpointStore, a: str, b: str, top: int, as_json: bool) -> int:
    from engine.store.comparison import compare_manifests

    check_ids(store, [a, b])
    with store.lock(exclusive=False):
        m1, m2 = read_manifest(store, a), read_manifest(store, b)
        names2 = m2.by_name()
        differing = sum(1 for r in m1.tensors if r.name in names2 and names2[r.name].hash != r.hash)
        with ProgressBar(differing * 2, "comparing", unit="tensors") as bar:
            try:
                result = compare_manifests(m1, m2, _loader(store, bar), a, b)
            except CheckpointCorrupted as exc:
                raise CommandFailed(str(exc), EXIT_DAMAGED) from None
    data = {"checkpoint_a": a, "checkpoint_b": b, "tensors": len(m1.tensors),
            "num_differences": result["num_differences"], "differences": result["differences"]}
    emit(as_json, data, _text(data, top))
    return 0


def _loader(store: CheckpointStore, bar: ProgressBar):
    from engine.store.tensors import as_tensor, new_host_buffer, numpy_bytes

    def load(manifest: Manifest, rec: TensorRecord):
        buf = new_host_buffer(rec.nbytes, False)
        store.read_blob(rec, checkpoint_id=manifest.id, into=numpy_bytes(buf))
        bar.advance(1)
        return as_tensor(buf, rec.dtype, rec.shape)

    return load


def _number(value: float) -> str:
    return str(value) if not math.isfinite(value) else f"{value:.4g}"


def _text(data: dict, top: int) -> str:
    diffs = data["differences"]
    head = (f"{data['checkpoint_a']} -> {data['checkpoint_b']}: {data['num_differences']} of "
            f"{data['tensors']} tensors differ")
    if not diffs:
        return head + " (identical)"
    shown = diffs if top <= 0 else diffs[:top]
    rows = [[printable(d["layer"], 70), _number(d["change"]), _number(d["relative"]), _number(d["max_abs_change"]),
             d.get("note", "")] for d in shown]
    lines = [head + ", largest change first", table(["TENSOR", "L2 CHANGE", "RELATIVE", "MAX |CHANGE|", "NOTE"], rows,
                                                     right={1, 2, 3})]
    if len(shown) < len(diffs):
        lines.append(f"... {len(diffs) - len(shown)} more (--top 0 shows all)")
    return "\n".join(lines)
