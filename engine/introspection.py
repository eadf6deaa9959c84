"""WeightInspector: which parameters share memory (tied weights), and per-parameter statistics.

Two names are coupled when their tensors' byte ranges overlap on one device:
the same Parameter under two names (Qwen2's `model.embed_tokens.weight` and
`lm_head.weight`), but also a view at an offset into another parameter, or two
storages over the same memory (engine/store/identity.py: ranges, never a bare
`data_ptr`; meta and empty tensors are left out). Groups are recomputed on each
call: a restore with `assign=True` or a rebound Parameter can break a tie.
"""

from __future__ import annotations

import difflib

import torch

from engine.health_scan import scan_tensors
from engine.store.identity import overlap_groups


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

    @staticmethod
    def _describe(group: list) -> dict:
        start = min(span.start for _n, _t, span in group)
        end = max(span.end for _n, _t, span in group)
        dtypes = sorted({str(t.dtype).removeprefix("torch.") for _n, t, _s in group})
        return {
            "names": [name for name, _t, _s in group],
            "device": str(group[0][1].device),
            "data_ptr": hex(start),
            "nbytes": end - start,
            "dtype": "/".join(dtypes),
            "shapes": [list(t.shape) for _n, t, _s in group],
            "storage": f"{hex(start)} {_human_bytes(end - start)} {'/'.join(dtypes)}",
        }

    def get_shared_weights(self) -> list[list[str]]:
        """Groups of parameter names that share memory, each in model order; groups in model order."""
        return [[name for name, _t, _s in group] for group in overlap_groups(self._named())]

    def coupling_report(self) -> list[dict]:
        """Per group: names, device, data_ptr (hex), nbytes, dtype, shapes, and a one-line storage description."""
        return [self._describe(group) for group in overlap_groups(self._named())]

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
