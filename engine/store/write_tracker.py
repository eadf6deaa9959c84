"""WriteTracker: sees every in-place write to a set of tensors made on this thread.

A TorchDispatchMode watches every aten operator call while it is active. An operator whose
schema marks an argument as written (``mul_``, ``copy_``, ``fill_``, ``index_put_``,
``normal_``, ``out=`` ...) writes that tensor, whatever route the caller took:
``p.data.mul_()``, ``torch.no_grad()``, ``copy_``, ``p[...] = x``, ``nn.init.*_``. The
tracker asks `hits(tensor)` about each written tensor (by the bytes it overlaps, see
engine/store/identity.py) and calls `before(hits)` just before such an operator runs (the
edit journal's copy-on-write) and `after(hits)` just after it (the auto-checkpointer's count).

Not seen: writes from other threads, through numpy views, rebinding a parameter
(``module.weight = Parameter(...)``), and writes made inside `untracked()` (the store's and
the journal's own restores). Overhead: one Python call per operator while active.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.store.identity import byte_span
from engine.store.tensors import tracking_suspended

_write_args_cache: dict = {}


def _written_args(func) -> tuple[tuple[int, str], ...]:
    """(position, name) of every argument the operator writes, from its schema (cached)."""
    found = _write_args_cache.get(func)
    if found is None:
        schema = getattr(func, "_schema", None)
        found = tuple(
            (i, a.name)
            for i, a in enumerate(schema.arguments if schema is not None else ())
            if a.alias_info is not None and a.alias_info.is_write
        )
        _write_args_cache[func] = found
    return found


def written_tensors(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors one operator call writes in place."""
    out = []
    for i, name in _written_args(func):
        value = args[i] if i < len(args) else kwargs.get(name)
        for t in value if isinstance(value, (list, tuple)) else (value,):
            if isinstance(t, torch.Tensor):
                out.append(t)
    return out


class WriteTracker(TorchDispatchMode):
    """Calls `before`/`after` with what `hits` returned for the written tensors it recognised."""

    def __init__(self, hits: Callable[[torch.Tensor], Any],
                 before: Callable[[list], None] | None = None,
                 after: Callable[[list], None] | None = None):
        super().__init__()
        self.hits = hits
        self.before = before
        self.after = after

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        found = []
        if _written_args(func) and not tracking_suspended():
            found = [h for t in written_tensors(func, args, kwargs) if (h := self.hits(t))]
        if found and self.before is not None:
            self.before(found)
        out = func(*args, **kwargs)
        if found and self.after is not None:
            self.after(found)
        return out


class SpanOwners:
    """Which of a list of tensors a tensor's bytes overlap: `owners(t)` -> their indices.

    Spans are kept sorted by start; a lookup walks back from the last span starting before
    the tensor's end, as far as the longest span reaches, so overlapping owners (a view at
    an offset into another parameter) are all found.
    """

    def __init__(self, tensors: Iterable[torch.Tensor]):
        by_device: dict[tuple, list[tuple[int, int, int]]] = defaultdict(list)
        for index, t in enumerate(tensors):
            span = byte_span(t)
            if span is not None:
                by_device[span.device].append((span.start, span.end, index))
        self._spans = {d: sorted(s) for d, s in by_device.items()}
        self._starts = {d: [s[0] for s in spans] for d, spans in self._spans.items()}
        self._longest = {d: max(e - s for s, e, _ in spans) for d, spans in self._spans.items()}

    def owners(self, t: torch.Tensor) -> tuple[int, ...]:
        span = byte_span(t)
        if span is None or span.device not in self._spans:
            return ()
        spans, longest = self._spans[span.device], self._longest[span.device]
        i = bisect.bisect_left(self._starts[span.device], span.end) - 1
        found = []
        while i >= 0 and spans[i][0] + longest > span.start:
            start, end, index = spans[i]
            if end > span.start:
                found.append(index)
            i -= 1
        return tuple(found)
