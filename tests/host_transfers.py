"""Counts the reads of tensor data into Python while a block runs: observed, not declared by the code.

A `TorchFunctionMode` sees every tensor method call. The ones counted are those that copy
a tensor's data to the host, or would on an accelerator: `.cpu()`, `.to("cpu")`, `.item()`,
`.tolist()`, `.numpy()`, and `bool()`/`float()`/`int()`/`index()` of a tensor. On a CPU-only
machine nothing crosses a bus, so a `.cpu()` of a CPU tensor still counts: it is where the
code would wait for a GPU.

    with HostTransfers() as reads:
        scan_model(model)
    assert reads.count == 1, reads.calls
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode

_READS = frozenset({"cpu", "item", "tolist", "numpy", "__bool__", "__float__", "__int__", "__index__"})


def _is_cpu(target: object) -> bool:
    if isinstance(target, torch.Tensor):
        return target.device.type == "cpu"
    if isinstance(target, (str, torch.device)):
        return torch.device(target).type == "cpu"
    return False


class HostTransfers(TorchFunctionMode):
    """`calls`: the name of each counted read, in order; `count`: how many."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    @property
    def count(self) -> int:
        return len(self.calls)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name in _READS:
            self.calls.append(name)
        elif name == "to" and (any(_is_cpu(a) for a in args[1:]) or _is_cpu(kwargs.get("device"))):
            self.calls.append("to(cpu)")
        return func(*args, **kwargs)
