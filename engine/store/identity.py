"""Tensor identity: which tensors are the same bytes, which share memory, and the dtype table.

Two rules, both by storage and byte range, never by a bare `data_ptr` (every meta tensor
sits at address 0, and a view at an offset has its own data_ptr inside another's bytes):

- the same view (`view_key`): one storage, one byte offset, one dtype, shape and stride.
  Names that are the same view are one tensor under several names (tied weights); the
  checkpoints store it once and the health scan reads it once (`tie_groups`).
- shared memory (`ByteSpan`): the address ranges two tensors can touch overlap on one
  device. A view at an offset into another parameter shares memory without being the same
  view; the weight inspector reports it (`overlap_groups`) and the auto-checkpointer counts a
  write to it as a write to the model (`SpanIndex`).

The dtype table (engine/store/dtype_names.py) is mapped here to torch dtypes.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

import torch

from engine.store.dtype_names import DTYPES

NAME_TO_DTYPE = {name: getattr(torch, t) for name, (t, _size) in DTYPES.items() if hasattr(torch, t)}
DTYPE_TO_NAME = {dtype: name for name, dtype in NAME_TO_DTYPE.items()}


def view_key(t: torch.Tensor) -> tuple:
    """Identity of the exact bytes a tensor views: storage, byte offset, layout, dtype.

    Empty tensors view no bytes: their key is the tensor object itself (one empty
    tensor under two names is still one tensor; two empty tensors are never one).
    """
    if t.nbytes == 0:
        return ("empty", id(t))
    return (
        t.device.type,
        t.device.index,
        t.untyped_storage().data_ptr(),
        t.storage_offset() * t.element_size(),
        t.nbytes,
        t.dtype,
        tuple(t.shape),
        tuple(t.stride()),
    )


def tie_groups(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[list[str], torch.Tensor]]:
    """Names that are the same view, as (names, first name's tensor), in first-seen order.

    None and meta tensors (no bytes to compare) are left out.
    """
    groups: dict[tuple, tuple[list[str], torch.Tensor]] = {}
    for name, t in named:
        if t is None or t.is_meta:
            continue
        group = groups.get(view_key(t))
        if group is None:
            groups[view_key(t)] = ([name], t)
        else:
            group[0].append(name)
    return list(groups.values())


@dataclass(frozen=True)
class ByteSpan:
    """The addresses [start, end) a tensor can touch, on one device."""

    device: tuple[str, int | None]
    start: int
    end: int

    def overlaps(self, other: ByteSpan) -> bool:
        return self.device == other.device and self.start < other.end and other.start < self.end


def byte_span(t: torch.Tensor) -> ByteSpan | None:
    """Where a tensor's bytes lie; None when it has none (meta, empty, or no real storage)."""
    try:
        if t.is_meta or t.numel() == 0 or t.untyped_storage().nbytes() == 0:
            return None
        start = t.data_ptr()
    except (RuntimeError, NotImplementedError):  # tensors without storage (fake, functional)
        return None
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return ByteSpan((t.device.type, t.device.index), start, start + extent * t.element_size())


def overlap_groups(named: Iterable[tuple[str, torch.Tensor]]) -> list[list[tuple[str, torch.Tensor, ByteSpan]]]:
    """Names whose memory overlaps (transitively), each group in input order, groups by first member.

    Only groups of two or more names; meta and empty tensors share memory with nothing.
    """
    by_device: dict[tuple, list[tuple[ByteSpan, int, str, torch.Tensor]]] = defaultdict(list)
    for order, (name, t) in enumerate(named):
        span = byte_span(t)
        if span is not None:
            by_device[span.device].append((span, order, name, t))
    groups = []
    for items in by_device.values():
        items.sort(key=lambda it: (it[0].start, it[1]))
        current, end = [], 0
        for item in items:
            if current and item[0].start < end:
                current.append(item)
                end = max(end, item[0].end)
            else:
                groups.append(current)
                current, end = [item], item[0].end
        groups.append(current)
    ordered = [sorted(g, key=lambda it: it[1]) for g in groups if len(g) > 1]
    ordered.sort(key=lambda g: g[0][1])
    return [[(name, t, span) for span, _order, name, t in g] for g in ordered]


class SpanIndex:
    """The memory of a set of tensors, asked "does this tensor touch any of it?" in O(log n)."""

    def __init__(self, tensors: Iterable[torch.Tensor]):
        spans: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
        for t in tensors:
            span = byte_span(t)
            if span is not None:
                spans[span.device].append((span.start, span.end))
        self._starts: dict[tuple, list[int]] = {}
        self._ends: dict[tuple, list[int]] = {}
        for device, ranges in spans.items():
            merged: list[list[int]] = []
            for start, end in sorted(ranges):
                if merged and start <= merged[-1][1]:
                    merged[-1][1] = max(merged[-1][1], end)
                else:
                    merged.append([start, end])
            self._starts[device] = [r[0] for r in merged]
            self._ends[device] = [r[1] for r in merged]

    def touches(self, t: torch.Tensor) -> bool:
        span = byte_span(t)
        if span is None or span.device not in self._starts:
            return False
        i = bisect.bisect_left(self._starts[span.device], span.end) - 1  # last range starting before our end
        return i >= 0 and self._ends[span.device][i] > span.start
