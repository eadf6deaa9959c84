"""The edit gate: the policy's checks on the tensors one edit touched, and the user's probe.

Per tensor: ||dW|| / ||W|| against the edit limit (`policy.EDIT_RELATIVE_CHANGE_LIMIT`),
non-finite values (any NaN/Inf the edit brought in) and, when the run has baseline statistics
(engine/detection/baseline_stats.py), the tensor's max|w| and RMS against its own baseline:
the edit is rejected at the detection policy's `baseline_departure.high` ratio, the level at
which the per-step detection would raise HIGH, so no edit commits that the next scan would
flag. Then the probe, when given: `probe(model)` returning a bool (True passes) or a number
(passes when finite and >= `probe_min`), or a PromptProbe (engine/edits/probes.py). The gate
reads the touched tensors and their pre-edit copies only: nothing is proportional to the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from engine import policy
from engine.edits.probes import PromptProbe


@dataclass
class TensorCheck:
    """What the gate measured on one touched tensor."""

    delta_norm: float
    relative: float
    finite: bool
    max_abs: float | None = None  # of the edited tensor; measured only when a baseline judges it
    norm: float | None = None  # ||W_after||, likewise
    numel: int = 0


@dataclass
class GateRules:
    """What the gate judges with: the policy's limits and the run's baseline statistics (or None)."""

    relative_limit: float = policy.EDIT_RELATIVE_CHANGE_LIMIT
    baseline: object | None = None  # engine.detection.BaselineStats
    departure_limit: float = policy.RULES["baseline_departure"].params["high"].default


@dataclass
class GateVerdict:
    reasons: list[str] = field(default_factory=list)
    results: dict = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.reasons


_CHUNK = 1 << 19  # elements per step of the fused pass: few torch calls, chunks that stay in cache


class GateScratch:
    """The fused pass's chunk buffer per (device, dtype), kept from one edit to the next (a new
    one per edit would fault in fresh pages every time)."""

    def __init__(self):
        self._buffers: dict[tuple, torch.Tensor] = {}

    def get(self, device: torch.device, dtype: torch.dtype, n: int) -> torch.Tensor:
        buf = self._buffers.get((device, dtype))
        if buf is None or buf.numel() < n:
            buf = self._buffers[(device, dtype)] = torch.empty(n, dtype=dtype, device=device)
        return buf[:n]


def measure(after: torch.Tensor, before: torch.Tensor, *, magnitude: bool = False,
            scratch: GateScratch | None = None) -> TensorCheck:
    """||after - before||, relative to ||before||, whether `after` is all finite and, with
    `magnitude`, after's max|w| and norm (for the baseline rule).

    One pass over both tensors a chunk at a time into one small scratch buffer (a whole-tensor
    difference would allocate, and fault in, a tensor the size of the edited one): per chunk a
    difference into the scratch and two dot products on data still in cache. `after` finite
    follows from finite norms of `before` and the difference, so the elementwise check runs
    only when one of them is not finite.
    """
    if not after.is_floating_point():
        changed = not torch.equal(after, before)
        return TensorCheck(float(changed), float(changed), True)
    a, b = after.reshape(-1), before.reshape(-1)
    if not a.numel():
        return TensorCheck(0.0, 0.0, True, 0.0 if magnitude else None, 0.0 if magnitude else None)
    wide = a.dtype not in (torch.float32, torch.float64)
    n = min(_CHUNK, a.numel())
    work = torch.float32 if wide else a.dtype
    scratch_buf = (scratch or GateScratch()).get(a.device, work, n)
    sums = []  # per chunk: ||d||^2, ||b||^2 [, ||a||^2, min, max], read back once (one sync on a GPU)
    for start in range(0, a.numel(), _CHUNK):
        a_c, b_c = a[start : start + _CHUNK], b[start : start + _CHUNK]
        d = scratch_buf[: a_c.numel()]
        if wide:
            b_c = b_c.float()
        torch.sub(a_c, b_c, out=d)
        sums += (torch.dot(d, d), torch.dot(b_c, b_c))
        if magnitude:
            a_f = a_c.float() if wide else a_c
            sums += (torch.dot(a_f, a_f), *torch.aminmax(a_f))
    values = torch.stack(sums).tolist()
    step = 5 if magnitude else 2
    delta_sq, base_sq = math.fsum(values[0::step]), math.fsum(values[1::step])
    after_sq = math.fsum(values[2::step]) if magnitude else 0.0
    max_abs = max(max(-x for x in values[3::step]), max(values[4::step])) if magnitude else 0.0
    delta, base = math.sqrt(delta_sq), math.sqrt(base_sq)
    finite = math.isfinite(delta) and math.isfinite(base)
    if not finite:
        finite = bool(torch.isfinite(after).all())
    if base > 0:
        relative = delta / base
    else:
        relative = 0.0 if delta == 0 else math.inf
    if not magnitude:
        return TensorCheck(delta, relative, finite)
    return TensorCheck(delta, relative, finite, max_abs, math.sqrt(after_sq), a.numel())


def departure(baseline, name: str, check: TensorCheck) -> tuple[float, str]:
    """(ratio, which) of an edited tensor's max|w| or RMS to its baseline's (floored, as detection does)."""
    if check.max_abs is None or check.norm is None or not check.numel:
        return math.nan, ""
    max_ratio, rms_ratio = baseline.ratio_of(name, check.max_abs, check.norm / math.sqrt(check.numel))
    return (max_ratio, "max|w|") if not rms_ratio > max_ratio else (rms_ratio, "RMS")


def judge(checks: dict[str, TensorCheck], rules: GateRules) -> GateVerdict:
    """The policy's rules applied to the measured tensors."""
    limit = rules.relative_limit
    verdict = GateVerdict(results={"relative_change_limit": limit})
    if rules.baseline is not None:
        verdict.results["baseline_rule"] = f"max|w|, RMS < {rules.departure_limit:g}x baseline"
    for name, check in checks.items():
        if not check.finite:
            verdict.reasons.append(f"{name}: the edit brought NaN or Inf values in")
            continue
        if check.relative > limit:
            verdict.reasons.append(
                f"{name}: ||dW||/||W|| = {check.relative:.3g} exceeds the edit limit {limit:g}")
        if rules.baseline is not None:
            ratio, which = departure(rules.baseline, name, check)
            if ratio >= rules.departure_limit:
                verdict.reasons.append(f"{name}: {which} is {ratio:.3g}x its baseline (limit "
                                       f"{rules.departure_limit:g}x, the detection policy's baseline_departure high)")
    return verdict


def run_probe(verdict: GateVerdict, probe: Callable | PromptProbe | None, model, probe_min: float) -> None:
    """Run the user's probe on the edited model; a failure or an exception adds a reason."""
    if probe is None:
        return
    try:
        with torch.no_grad():
            if isinstance(probe, PromptProbe):
                failures = probe.failures(model)
                verdict.results["probe"] = f"{len(probe.prompts) - len(failures)}/{len(probe.prompts)} prompts"
                verdict.reasons.extend(f"prompt probe: {line}" for line in failures)
                return
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
