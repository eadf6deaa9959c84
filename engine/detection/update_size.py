"""Per-step update size ||W_t - W_(t-1)|| / ||W_(t-1)|| of each tensor that changed.

One huge edit (a rank-one "disabling" edit, a learning rate of 50) shows here
at the step it happens, with the tensor named, before any downstream symptom.
Which tensors changed comes from the scan that already ran (min, max and norm
differ) and from the tensor's version counter; only those are compared, so an
edit of one matrix costs one subtraction. The previous values are kept as a
copy on the tensor's own device while the model fits `budget_bytes`; above it
the change of the norm, a lower bound of ||dW||, is used instead (free, but
blind to an edit that keeps the norm).
"""

from __future__ import annotations

import math

import torch

from engine.health_scan import ScanResult, unique_named_tensors

DEFAULT_BUDGET_BYTES = 512 * 2**20


class UpdateSize:
    def __init__(self, model: torch.nn.Module, *, norm_floor_rms: float = 0.0,
                 budget_bytes: int = DEFAULT_BUDGET_BYTES):
        self.tensors = {name: t.detach() for name, _, t in unique_named_tensors(
            model.named_parameters(remove_duplicate=False)) if t.is_floating_point() and t.numel()}
        self.norm_floor_rms = norm_floor_rms
        total = sum(t.numel() * t.element_size() for t in self.tensors.values())
        self.exact = total <= budget_bytes
        self.previous: dict[str, torch.Tensor] = {}
        self.signature: dict[str, tuple] = {}  # name -> (version, min, max, norm) at the last observation

    def measure(self, scan: ScanResult) -> list[tuple[str, float]]:
        """(name, relative change since the last call) for each tensor that changed; first call: none."""
        changed, scale = [], {}
        for s in scan.weights:
            tensor = self.tensors.get(s.name)
            if tensor is None:
                continue
            signature = (tensor._version, s.minimum, s.maximum, s.norm)
            before = self.signature.get(s.name)
            self.signature[s.name] = signature
            if before is None:
                if self.exact:
                    self.previous[s.name] = tensor.clone()
                continue
            if _same(before, signature):
                continue
            floor = self.norm_floor_rms * math.sqrt(s.numel)
            scale[s.name] = (before[3], s.norm, floor)
            changed.append(s.name)
        if not changed:
            return []
        if not self.exact:
            return [(n, abs(now - was) / max(was, floor, 1e-30)) for n, (was, now, floor) in
                    ((n, scale[n]) for n in changed) if was is not None and now is not None]
        with torch.no_grad():
            current = [self.tensors[n] for n in changed]
            previous = [self.previous[n] for n in changed]
            torch._foreach_sub_(previous, current)  # in place: no model-sized allocation per step
            values = torch.stack(torch._foreach_norm(previous)).float().cpu().tolist()
            torch._foreach_copy_(previous, current)
        out = []
        for name, delta in zip(changed, values):
            was, _, floor = scale[name]
            out.append((name, delta / max(was or 0.0, floor, 1e-30)))
        return out

    def forget(self) -> None:
        """After a restore: the next observation starts afresh (its change is not an update)."""
        self.signature.clear()
        self.previous.clear()


def _same(a: tuple, b: tuple) -> bool:
    # NaN != NaN: compare by repr so an unchanged non-finite tensor is "unchanged"
    return a[0] == b[0] and all(x == y or repr(x) == repr(y) for x, y in zip(a[1:], b[1:]))


def update_issues(changes: list[tuple[str, float]], high: float, critical: float) -> list[dict]:
    issues = []
    for name, relative in sorted(changes, key=lambda item: -item[1] if math.isfinite(item[1]) else -math.inf):
        if not relative >= high:
            continue
        severity = "CRITICAL" if relative >= critical else "HIGH"
        issues.append({
            "severity": severity, "source": "detection", "check": "update_size", "rule": "update_size",
            "layer": name, "value": relative, "threshold": critical if severity == "CRITICAL" else high,
            "message": f"{name} changed by {relative:.3g}x its norm in one step (||dW||/||W||)",
        })
    return issues
