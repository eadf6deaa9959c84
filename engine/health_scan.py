"""The fused health scan: every weight (and gradient) of a model in one pass, one host read per device.

The guide checks a model with a Python loop of `isnan(p).sum().item()`,
`isinf(p).sum().item()` and `abs().max().item()` per parameter: three passes
and three device-to-host syncs per tensor. Here each unique tensor is read once
by `torch.aminmax` (measured on CPU: about as fast as a plain `max()` and
several times faster than an inf-norm or `abs().max()`; see bench/scan.py).
NaN propagates through min/max, and an infinity shows up as the min or max,
so the same pass says which tensors are non-finite; only those are counted
with `isnan`/`isinf`. Gradients get one `torch._foreach_norm` per
(device, dtype) group, as torch's own `clip_grad_norm_` does. All per-tensor
results of a device are concatenated and read back with a single `.tolist()`.
When some tensors are non-finite, their counts are stacked on their device and
read back with one more `.tolist()` per device that holds any: a clean model
costs one device-to-host read per device, a damaged one two, however many of
its tensors are damaged (tests/test_safety_monitor_scan.py counts the reads).

Tied parameters (the same view of the same storage under several names) are
scanned once and reported under every name.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch

from engine.store.identity import tie_groups

# dtypes aminmax reads directly; other floating types (float8 ...) are widened per tensor.
_NATIVE_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


@dataclass(frozen=True)
class TensorStats:
    """One unique tensor's scan result. `max_abs` is NaN when the tensor holds a NaN."""

    name: str
    aliases: tuple[str, ...]  # other names of this same tensor (tied parameters)
    shape: tuple[int, ...]
    dtype: str
    device: str
    numel: int
    minimum: float
    maximum: float
    max_abs: float
    finite_max_abs: float  # largest finite |x| (equals max_abs for a finite tensor)
    nan_count: int = 0
    inf_count: int = 0
    norm: float | None = None  # L2 norm, when asked for

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def finite(self) -> bool:
        return self.nan_count == 0 and self.inf_count == 0


@dataclass(frozen=True)
class GradStats:
    """One parameter's gradient: its L2 norm and, if non-finite, the NaN/Inf counts."""

    name: str
    numel: int
    norm: float
    nan_count: int = 0
    inf_count: int = 0

    @property
    def is_zero(self) -> bool:
        return self.norm == 0.0


@dataclass
class ScanResult:
    weights: list[TensorStats] = field(default_factory=list)
    grads: list[GradStats] = field(default_factory=list)
    extras: list[list[float]] = field(default_factory=list)  # the `extra` tensors, flattened, in order
    seconds: float = 0.0

    @property
    def nan_count(self) -> int:
        return sum(s.nan_count for s in self.weights)

    @property
    def inf_count(self) -> int:
        return sum(s.inf_count for s in self.weights)

    @property
    def max_abs_weight(self) -> float:
        """Largest finite |w| over every weight (0.0 for an empty model)."""
        return max((s.finite_max_abs for s in self.weights), default=0.0)

    @property
    def grad_norm(self) -> float | None:
        """Total L2 norm of all gradients (as clip_grad_norm_ computes it); None if none."""
        if not self.grads:
            return None
        return math.sqrt(math.fsum(g.norm * g.norm for g in self.grads))


def unique_named_tensors(
    named: Iterable[tuple[str, torch.Tensor]],
) -> list[tuple[str, tuple[str, ...], torch.Tensor]]:
    """Collapse names that are the same view of one storage (engine/store/identity.py); skip None and meta.

    Returns (first name, other names, tensor) in first-seen order.
    """
    return [(names[0], tuple(names[1:]), t) for names, t in tie_groups(named)]


def _scannable(t: torch.Tensor) -> bool:
    return t.is_floating_point() and t.numel() > 0


def _nonfinite_row(t: torch.Tensor) -> torch.Tensor:
    """[NaN count, Inf count, largest finite |x|] of a tensor known to hold a non-finite value, on its device."""
    dtype = _result_dtype(t.device)
    largest = torch.where(torch.isfinite(t), t.abs(), 0).amax().to(dtype)
    return torch.stack([torch.isnan(t).sum().to(dtype), torch.isinf(t).sum().to(dtype), largest])


def _norm_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate norms in at least float32 so half-precision sums do not overflow."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _result_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def scan_tensors(
    named: Sequence[tuple[str, torch.Tensor]],
    *,
    grads: Sequence[tuple[str, torch.Tensor]] = (),
    norms: bool = False,
    extra: Sequence[torch.Tensor] = (),
) -> ScanResult:
    """Scan weights (and gradients) with one read each and one host read per device (two if any is non-finite).

    `named`: (name, tensor) pairs; identical views are scanned once.
    `grads`: (name, gradient) pairs; each gets its L2 norm (non-finite ones are counted).
    `norms`: also compute each weight's L2 norm (a second, cheap pass).
    `extra`: small device tensors (e.g. activation statistics) read back in the same sync.
    """
    start = time.perf_counter()
    unique = unique_named_tensors(named)
    grads = [(n, g) for n, g in grads if g is not None and _scannable(g) and not g.is_sparse]
    with torch.no_grad():
        result = _scan(unique, list(grads), norms, list(extra))
    result.seconds = time.perf_counter() - start
    return result


def scan_model(model: torch.nn.Module, *, grads: bool = True, norms: bool = False, extra=()) -> ScanResult:
    """Scan every parameter of `model` (and the gradients present, if `grads`)."""
    named = list(model.named_parameters(remove_duplicate=False))
    grad_pairs = []
    if grads:
        seen = set()
        for name, p in named:
            if p.grad is not None and p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                grad_pairs.append((name, p.grad))
    return scan_tensors(named, grads=grad_pairs, norms=norms, extra=extra)


def _scan(unique, grads, norms, extra) -> ScanResult:
    # Per device, the pieces read back: per-weight (min, max[, norm]), per-grad norm, extras.
    by_device: dict[torch.device, list[torch.Tensor]] = defaultdict(list)
    weight_slots: list[tuple[torch.device, int, int] | None] = []  # (device, offset, width) per unique weight
    offsets: dict[torch.device, int] = defaultdict(int)

    def put(device, tensor: torch.Tensor) -> int:
        flat = tensor.reshape(-1).to(_result_dtype(device))
        by_device[device].append(flat)
        at = offsets[device]
        offsets[device] += flat.numel()
        return at

    # Weights, grouped by (device, dtype): one aminmax per tensor, stacked per group.
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, (_, _, t) in enumerate(unique):
        if _scannable(t):
            groups[(t.device, t.dtype)].append(i)
    weight_slots = [None] * len(unique)
    width = 3 if norms else 2
    for (device, dtype), idxs in groups.items():
        tensors = [unique[i][2] for i in idxs]
        wide = dtype not in _NATIVE_FLOATS
        pairs = [torch.aminmax(t.float() if wide else t) for t in tensors]
        block = torch.stack([torch.stack([p.min for p in pairs]), torch.stack([p.max for p in pairs])], dim=1)
        block = block.to(_result_dtype(device))
        if norms:
            norm_src = [t.float() for t in tensors] if wide else tensors
            n = torch.stack(torch._foreach_norm(norm_src, 2, dtype=_norm_dtype(dtype)))
            block = torch.cat([block, n.to(block.dtype).unsqueeze(1)], dim=1)
        at = put(device, block)
        for row, i in enumerate(idxs):
            weight_slots[i] = (device, at + row * width, width)

    grad_slots: list[tuple[torch.device, int] | None] = [None] * len(grads)
    ggroups: dict[tuple, list[int]] = defaultdict(list)
    for j, (_, g) in enumerate(grads):
        ggroups[(g.device, g.dtype)].append(j)
    for (device, dtype), idxs in ggroups.items():
        n = torch.stack(torch._foreach_norm([grads[j][1] for j in idxs], 2, dtype=_norm_dtype(dtype)))
        at = put(device, n)
        for row, j in enumerate(idxs):
            grad_slots[j] = (device, at + row)

    extra_slots = []
    for t in extra:
        extra_slots.append((t.device, put(t.device, t.detach()), t.numel()))

    host: dict[torch.device, list[float]] = {}
    for device, parts in by_device.items():
        host[device] = torch.cat(parts).tolist()  # the one read-back for this device

    weight_rows = []
    suspects = []  # (kind, index, tensor) whose min/max/norm was not finite
    for i, (name, aliases, t) in enumerate(unique):
        slot = weight_slots[i]
        if slot is None:
            weight_rows.append([0.0, 0.0, 0.0 if norms else None])
            continue
        device, at, w = slot
        vals = host[device][at : at + w]
        weight_rows.append([vals[0], vals[1], vals[2] if norms else None])
        if not (math.isfinite(vals[0]) and math.isfinite(vals[1])):
            suspects.append(("w", i, t))
    grad_norms = []
    for j, (name, g) in enumerate(grads):
        slot = grad_slots[j]
        if slot is None:
            grad_norms.append(0.0)
            continue
        v = host[slot[0]][slot[1]]
        grad_norms.append(v)
        if not math.isfinite(v):
            suspects.append(("g", j, g))

    counts: dict[tuple[str, int], tuple[int, int]] = {}
    finite_max_of: dict[tuple[str, int], float] = {}
    suspects_on: dict[torch.device, list[tuple[str, int, torch.Tensor]]] = defaultdict(list)
    for suspect in suspects:
        suspects_on[suspect[2].device].append(suspect)
    for device, found in suspects_on.items():
        # Only non-finite tensors are counted: stacked on their device, one more read-back (a rare path).
        rows = torch.stack([_nonfinite_row(t) for _, _, t in found]).tolist()
        for (kind, idx, _), (nan, inf, finite_max) in zip(found, rows):
            counts[(kind, idx)] = (int(nan), int(inf))
            finite_max_of[(kind, idx)] = finite_max

    weights = []
    for i, (name, aliases, t) in enumerate(unique):
        mn, mx, norm = weight_rows[i]
        nan, inf = counts.get(("w", i), (0, 0))
        max_abs = math.nan if nan else max(abs(mn), abs(mx))
        finite_max = finite_max_of.get(("w", i), max_abs)
        weights.append(
            TensorStats(
                name=name,
                aliases=aliases,
                shape=tuple(t.shape),
                dtype=str(t.dtype).removeprefix("torch."),
                device=str(t.device),
                numel=t.numel(),
                minimum=mn,
                maximum=mx,
                max_abs=max_abs,
                finite_max_abs=finite_max,
                nan_count=nan,
                inf_count=inf,
                norm=norm,
            )
        )
    grad_stats = []
    for j, (name, g) in enumerate(grads):
        nan, inf = counts.get(("g", j), (0, 0))
        grad_stats.append(
            GradStats(name=name, numel=g.numel(), norm=grad_norms[j], nan_count=nan, inf_count=inf)
        )
    extras = [host[device][at : at + n] for device, at, n in extra_slots]
    return ScanResult(weights=weights, grads=grad_stats, extras=extras)
