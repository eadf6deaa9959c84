"""WeightInspector: which parameters share memory (tied weights), and per-parameter statistics.

Two names are coupled when their tensors' byte ranges overlap on one device:
the same Parameter under two names (Qwen2's `model.embed_tokens.weight` and
`lm_head.weight`), but also a view at an offset into another parameter, or two
storages over the same memory. Bare `data_ptr` equality would miss the view and
would group every meta tensor (they all sit at address 0), so ranges are
compared and meta or empty tensors are left out. Groups are recomputed on each
call: a restore with `assign=True` or a rebound Parameter can break a tie.
"""

from __future__ import annotations

import difflib
from collections import defaultdict

import torch

from engine.health_scan import scan_tensors


def _byte_range(t: torch.Tensor) -> tuple[int, int] | None:
    """[start, end) addresses of the bytes `t` can touch; None for meta or empty tensors."""
    if t.is_meta or t.numel() == 0 or t.untyped_storage().nbytes() == 0:
        return None
    extent = 1 + sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.data_ptr(), t.data_ptr() + extent * t.element_size()


def _human_bytes(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"


class WeightInspector:
    """Tied-weight detection and parameter statistics for one model."""

    def __init__(self, model: torch.nn.Module, model_name: str = ""):
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"WeightInspector needs a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.model_name = model_name

    def _named(self) -> list[tuple[str, torch.Tensor]]:
        return list(self.model.named_parameters(remove_duplicate=False))

    def _groups(self) -> list[dict]:
        named = self._named()
        spans = defaultdict(list)  # device -> [(start, end, order, name, tensor)]
        for order, (name, p) in enumerate(named):
            r = _byte_range(p)
            if r is not None:
                spans[str(p.device)].append((r[0], r[1], order, name, p))
        groups = []
        for device, items in spans.items():
            items.sort(key=lambda it: (it[0], it[2]))
            current, end = [], None
            for item in items:
                if current and item[0] < end:
                    current.append(item)
                    end = max(end, item[1])
                else:
                    if len(current) > 1:
                        groups.append(self._describe(device, current))
                    current, end = [item], item[1]
            if len(current) > 1:
                groups.append(self._describe(device, current))
        groups.sort(key=lambda g: g["first"])
        return groups

    @staticmethod
    def _describe(device: str, items: list) -> dict:
        items = sorted(items, key=lambda it: it[2])
        start = min(it[0] for it in items)
        end = max(it[1] for it in items)
        dtypes = sorted({str(it[4].dtype).removeprefix("torch.") for it in items})
        return {
            "names": [it[3] for it in items],
            "first": items[0][2],
            "device": device,
            "data_ptr": hex(start),
            "nbytes": end - start,
            "dtype": "/".join(dtypes),
            "shapes": [list(it[4].shape) for it in items],
            "storage": f"{hex(start)} {_human_bytes(end - start)} {'/'.join(dtypes)}",
        }

    def get_shared_weights(self) -> list[list[str]]:
        """Groups of parameter names that share memory, each in model order; groups in model order."""
        return [g["names"] for g in self._groups()]

    def coupling_report(self) -> list[dict]:
        """Per group: names, device, data_ptr (hex), nbytes, dtype, shapes, and a one-line storage description."""
        return [{k: v for k, v in g.items() if k != "first"} for g in self._groups()]

    def get_shared_layers(self, name: str) -> list[str]:
        """The other parameter names coupled with `name` (a parameter or a module name); [] if none."""
        named = self._named()
        params = [n for n, _ in named]
        if name in params:
            members = {name}
        else:
            prefix = name + "."
            members = {n for n in params if n.startswith(prefix)}
            if not members:
                close = difflib.get_close_matches(name, params, n=3, cutoff=0.5)
                hint = f"; did you mean {', '.join(close)}?" if close else ""
                raise ValueError(
                    f"{name!r} is neither a parameter nor a module of {self.model_name or 'this model'}{hint}"
                )
        coupled = []
        for group in self.get_shared_weights():
            if members & set(group):
                coupled += [n for n in group if n not in members and n not in coupled]
        return coupled

    def parameter_stats(self) -> list[dict]:
        """Per parameter name (aliases included): shape, dtype, numel, norm, max_abs, NaN/Inf counts (fused scan)."""
        named = self._named()
        scan = scan_tensors(named, norms=True)
        by_name = {}
        for s in scan.weights:
            for n in s.names:
                by_name[n] = s
        rows = []
        for name, p in named:
            s = by_name.get(name)
            rows.append(
                {
                    "name": name,
                    "shape": list(p.shape),
                    "dtype": str(p.dtype).removeprefix("torch."),
                    "device": str(p.device),
                    "numel": p.numel(),
                    "norm": s.norm if s else None,
                    "max_abs": s.max_abs if s else None,
                    "min": s.minimum if s else None,
                    "max": s.maximum if s else None,
                    "nan_count": s.nan_count if s else 0,
                    "inf_count": s.inf_count if s else 0,
                    "requires_grad": p.requires_grad,
                }
            )
        return rows
