"""Activation anomalies from forward hooks, with no host sync inside a forward pass.

Each hooked module's output is reduced once (`torch.aminmax`) and folded into
a small device buffer holding the running min and max since the last health
check (two in-place element-wise ops). NaN propagates through both, so a
single NaN anywhere in an output survives to the check. The buffer is read
back by the health scan together with the weights (the same host sync), and
only then compared with each module's baseline: an exponential moving average
of the per-interval max|output|, trusted once the module has run `warmup`
forward calls. Values that are non-finite or spikes do not move the baseline.

By default the repeated blocks are hooked (the largest `nn.ModuleList`, i.e.
the decoder layers) plus the input and output embeddings: a NaN produced
anywhere inside a block shows at that block's output, so the first block
reporting it names where it started. `granularity="leaves"` hooks every leaf
module that owns parameters, for finer blame at more cost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

_EMA_KEEP = 0.8  # weight of the old baseline when a new interval's max is folded in
_BASELINE_FLOOR = 1e-6  # a baseline of ~0 (an all-zero output) must not make every value a spike


@dataclass
class _ModuleState:
    name: str
    calls: int = 0  # forward calls ever seen
    calls_since_check: int = 0
    baseline: float | None = None


def _first_tensor(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            if isinstance(item, torch.Tensor):
                return item
    if isinstance(output, dict):
        for item in output.values():
            if isinstance(item, torch.Tensor):
                return item
    return None


def monitored_modules(model: nn.Module, granularity: str = "blocks") -> list[tuple[str, nn.Module]]:
    """The modules whose outputs are watched, in model order."""
    if granularity not in ("blocks", "leaves"):
        raise ValueError(f"granularity must be 'blocks' or 'leaves', got {granularity!r}")
    names = {id(m): n for n, m in model.named_modules()}
    chosen: dict[int, nn.Module] = {}
    if granularity == "blocks":
        lists = [
            (sum(p.numel() for p in ml.parameters()), name, ml)
            for name, ml in model.named_modules()
            if isinstance(ml, nn.ModuleList) and len(ml) > 0
        ]
        if lists:
            _, _, blocks = max(lists, key=lambda item: item[0])
            for block in blocks:
                chosen[id(block)] = block
            for getter in ("get_input_embeddings", "get_output_embeddings"):
                fn = getattr(model, getter, None)
                emb = fn() if callable(fn) else None
                if isinstance(emb, nn.Module) and id(emb) in names:
                    chosen[id(emb)] = emb
    if not chosen:
        for m in model.modules():
            if not list(m.children()) and any(True for _ in m.parameters(recurse=False)):
                chosen[id(m)] = m
    order = [id(m) for m in model.modules()]
    return [(names[i], chosen[i]) for i in order if i in chosen]


class ActivationMonitor:
    """Forward hooks that keep device-side min/max of module outputs until the next check."""

    def __init__(self, model: nn.Module, *, granularity: str = "blocks"):
        modules = monitored_modules(model, granularity)
        self.states = [_ModuleState(name) for name, _ in modules]
        self._buffers: dict[torch.device, torch.Tensor] = {}
        self._handles = [m.register_forward_hook(self._hook_for(i)) for i, (_, m) in enumerate(modules)]
        self.last_peaks: dict[str, float] = {}  # max|output| per module seen by the last resolve

    @property
    def module_names(self) -> list[str]:
        return [s.name for s in self.states]

    def _buffer(self, device: torch.device) -> torch.Tensor:
        buf = self._buffers.get(device)
        if buf is None:
            # A normal tensor even when first touched under inference_mode, so later in-place updates work.
            with torch.inference_mode(False), torch.no_grad():
                buf = torch.empty(len(self.states), 2, dtype=torch.float32, device=device)
                buf[:, 0] = math.inf
                buf[:, 1] = -math.inf
            self._buffers[device] = buf
        return buf

    def observe(self, index: int, output) -> None:
        """Fold one output of monitored module `index` into the device buffer (what the hook does)."""
        t = _first_tensor(output)
        if t is None or not t.is_floating_point() or t.numel() == 0:
            return
        with torch.no_grad():
            mn, mx = torch.aminmax(t.detach())
            row = self._buffer(t.device)[index]
            torch.minimum(row[0], mn, out=row[0])
            torch.maximum(row[1], mx, out=row[1])
        state = self.states[index]
        state.calls += 1
        state.calls_since_check += 1

    def _hook_for(self, index: int):
        def hook(module, args, output):
            self.observe(index, output)

        return hook

    def take_pending(self) -> list[torch.Tensor]:
        """Snapshot and reset the device buffers (no sync); pass the snapshots to `resolve` once read."""
        snaps = []
        with torch.no_grad():
            for buf in self._buffers.values():
                snaps.append(buf.clone())
                buf[:, 0] = math.inf
                buf[:, 1] = -math.inf
        return snaps

    def resolve(self, host_buffers: list[list[float]], *, spike_factor: float, warmup: int) -> list[dict]:
        """Turn read-back buffers into issues and update baselines."""
        n = len(self.states)
        lo = [math.inf] * n
        hi = [-math.inf] * n
        for flat in host_buffers:
            for i in range(n):
                a, b = flat[2 * i], flat[2 * i + 1]
                if math.isnan(a) or math.isnan(b):
                    lo[i], hi[i] = math.nan, math.nan
                elif not math.isnan(lo[i]):
                    lo[i], hi[i] = min(lo[i], a), max(hi[i], b)
        issues = []
        self.last_peaks = {}
        for i, state in enumerate(self.states):
            if state.calls_since_check == 0:
                continue
            state.calls_since_check = 0
            if math.isnan(lo[i]):
                issues.append(_issue("CRITICAL", "activation_nan", state.name, f"NaN in the output of {state.name}"))
                continue
            peak = max(-lo[i], hi[i])
            if math.isinf(peak):
                issues.append(_issue("CRITICAL", "activation_inf", state.name, f"Inf in the output of {state.name}"))
                continue
            if peak == -math.inf:
                continue
            self.last_peaks[state.name] = peak
            baseline = state.baseline
            if baseline is not None and state.calls > warmup and peak > spike_factor * max(baseline, _BASELINE_FLOOR):
                issues.append(
                    _issue(
                        "HIGH",
                        "activation_spike",
                        state.name,
                        f"activation spike in {state.name}: max|out| {peak:.4g} is "
                        f"{peak / max(baseline, _BASELINE_FLOOR):.1f}x its baseline {baseline:.4g}",
                        value=peak,
                        threshold=spike_factor * baseline,
                    )
                )
                continue
            state.baseline = peak if baseline is None else _EMA_KEEP * baseline + (1 - _EMA_KEEP) * peak
        return issues

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self._buffers = {}


def _issue(severity, check, layer, message, **extra) -> dict:
    return {"severity": severity, "message": message, "source": "activations", "layer": layer, "check": check, **extra}
