"""The edit gate: the policy's checks on the tensors one edit touched, and the user's probe.

Per tensor: ||dW|| / ||W|| against `policy.EDIT_RELATIVE_CHANGE_LIMIT` and non-finite values
(any NaN/Inf that the edit brought in). Then the probe, when given: `probe(model)` returning a
bool (True passes) or a number (passes when finite and >= `probe_min`). The gate reads the
touched tensors and their pre-edit copies only: nothing here is proportional to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine import policy


@dataclass
class TensorCheck:
    """What the gate measured on one touched tensor."""

    delta_norm: float
    relative: float
    finite: bool


@dataclass
class GateVerdict:
    reasons: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons


_CHUNK = 1 << 20  # elements per step of the fused pass: few torch calls, no model-sized temporaries


def measure(after: torch.Tensor, before: torch.Tensor) -> TensorCheck:
    """||after - before||, relative to ||before||, and whether `after` is all finite.

    One pass over both tensors a chunk at a time into one small scratch buffer (a whole-tensor
    difference would allocate, and fault in, a tensor the size of the edited one). `after`
    finite follows from finite norms of `before` and the difference, so the elementwise check
    runs only when one of them is not finite.
    """
    if not after.is_floating_point():
        changed = not torch.equal(after, before)
        return TensorCheck(float(changed), float(changed), True)
    a, b = after.reshape(-1), before.reshape(-1)
    wide = a.dtype not in (torch.float32, torch.float64)
    scratch = torch.empty(min(_CHUNK, a.numel()), dtype=torch.float32 if wide else a.dtype, device=a.device)
    delta_sq = base_sq = 0.0
    for start in range(0, a.numel(), _CHUNK):
        a_c, b_c = a[start : start + _CHUNK], b[start : start + _CHUNK]
        d = scratch[: a_c.numel()]
        if wide:
            b_c = b_c.float()
        torch.sub(a_c, b_c, out=d)
        delta_sq += float(torch.dot(d, d))
        base_sq += float(torch.dot(b_c, b_c))
    delta, base = math.sqrt(delta_sq), math.sqrt(base_sq)
    finite = math.isfinite(delta) and math.isfinite(base)
    if not finite:
        finite = bool(torch.isfinite(after).all())
    if base > 0:
        relative = delta / base
    else:
        relative = 0.0 if delta == 0 else math.inf
    return TensorCheck(delta, relative, finite)


def judge(checks: dict[str, TensorCheck], limit: float | None = None) -> GateVerdict:
    """The policy's rules applied to the measured tensors."""
    limit = policy.EDIT_RELATIVE_CHANGE_LIMIT if limit is None else limit
    verdict = GateVerdict(results={"relative_change_limit": limit})
    for name, check in checks.items():
        if not check.finite:
            verdict.reasons.append(f"{name}: the edit brought NaN or Inf values in")
        elif check.relative > limit:
            verdict.reasons.append(
                f"{name}: ||dW||/||W|| = {check.relative:.3g} exceeds the edit limit {limit:g}")
    return verdict


def run_probe(verdict: GateVerdict, probe: Callable | None, model, probe_min: float) -> None:
    """Run the user's probe on the edited model; a failure or an exception adds a reason."""
    if probe is None:
        return
    try:
        with torch.no_grad():
            value = probe(model)
    except Exception as exc:
        verdict.results["probe"] = f"raised {type(exc).__name__}"
        verdict.reasons.append(f"the probe raised {type(exc).__name__}: {exc}")
        return
    if isinstance(value, torch.Tensor):
        value = value.item()
    verdict.results["probe"] = value
    if isinstance(value, bool):
        if not value:
            verdict.reasons.append("the probe returned False")
    elif not isinstance(value, (int, float)) or not math.isfinite(value) or value < probe_min:
        verdict.reasons.append(f"the probe returned {value!r} (needs a finite number >= {probe_min:g})")
