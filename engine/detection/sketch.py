"""A fixed sample of each weight tensor's elements, gathered with one copy call per device per step.

The per-step update size ||W_t - W_t-1|| / ||W_t-1|| measured over every
element costs three passes over the model and a copy of it: far more than 1 %
of a CPU training step. Measured over the same `sample` positions of each
tensor at both steps, the ratio ||S_t - S_t-1|| / ||S_t-1|| estimates it at a
cost set by the number of tensors, not their bytes: a dense change (a
learning-rate spike, a rank-one edit u v^T with dense u and v) is estimated to
a few per cent, since it moves the sampled elements as it moves the rest.

The positions are a systematic sample: `offset + i * stride`, the stride the
largest at most numel / sample that shares no factor with the row length (so
consecutive positions step to other columns as well as down the rows, instead
of running down a few columns), the offset drawn once from a seeded generator. One strided view per tensor is made
once; each gather copies all of a device's views into the rows of a
(tensors x sample) buffer with a single `torch._foreach_copy_` (an index per
tensor would cost a Python-level op each: three times as much on 290
tensors). A tensor of at most `sample` elements is taken whole, so its numbers
are exact; `sample = 0` takes every tensor whole (exact, at the cost of two
copies of the weights).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from engine.health_scan import unique_named_tensors
from engine.policy import RULES

DEFAULT_SAMPLE = int(RULES["update_size"].params["sample"].default)
SEED = 0


@dataclass
class _Group:
    """The tensors of one device (and buffer dtype): their names, the views gathered, where each lands."""

    device: torch.device
    dtype: torch.dtype  # of the buffers: float32, or float64 for float64 weights
    width: int  # a row of `width` elements per tensor (0: each tensor whole, one after the other)
    names: list[str]
    sources: list[torch.Tensor]  # the live views the sample is read from
    numels: list[int]  # each tensor's element count

    @property
    def taken(self) -> list[int]:
        return [s.numel() for s in self.sources]

    @property
    def size(self) -> int:
        return len(self.names) * self.width if self.width else sum(self.taken)

    def slices(self, buffer: torch.Tensor) -> list[torch.Tensor]:
        """Each tensor's part of `buffer` (row prefixes; the rest of a row stays zero)."""
        if self.width:
            rows = buffer.view(len(self.names), self.width)
            parts = [rows[i, :k] for i, k in enumerate(self.taken)]
        else:
            parts = buffer.split(self.taken)
        return [p.view(s.shape) for p, s in zip(parts, self.sources)]

    def norms(self, slots: torch.Tensor) -> torch.Tensor:
        """Each tensor's L2 norm in each slot of `slots` (this group's (2, size) buffer): (2, tensors), on the device."""
        if self.width:
            return torch.linalg.vector_norm(slots.view(2, len(self.names), self.width), dim=2)
        return torch.stack(torch._foreach_norm([*slots[0].split(self.taken), *slots[1].split(self.taken)])).view(2, -1)


class Sample:
    """Two slots per group (this step's sample and the last one's), each with its per-tensor slices made once."""

    def __init__(self, groups: list[_Group]):
        self.slots = [torch.zeros(2, g.size, dtype=g.dtype, device=g.device) for g in groups]
        self.slices = [[g.slices(buffer[slot]) for g, buffer in zip(groups, self.slots)] for slot in (0, 1)]


def sample_view(flat: torch.Tensor, sample: int, row: int, generator: torch.Generator) -> torch.Tensor:
    """`sample` elements of the 1-D `flat` at fixed, spread positions (a view); all of it when small."""
    numel = flat.numel()
    if not sample or numel <= sample:
        return flat
    stride = numel // sample
    while stride > 1 and math.gcd(stride, row) != 1:
        stride -= 1
    span = (sample - 1) * stride + 1
    offset = int(torch.randint(0, numel - span + 1, (1,), generator=generator))
    return flat.as_strided((sample,), (stride,), flat.storage_offset() + offset)


class WeightSketch:
    """The sampled positions of every floating-point tensor of a model (tied tensors once, by first name)."""

    def __init__(self, model: torch.nn.Module, sample: int = DEFAULT_SAMPLE, seed: int = SEED):
        if sample < 0:
            raise ValueError(f"sample must be >= 0 (0: every element), got {sample}")
        self.sample = int(sample)
        generator = torch.Generator().manual_seed(seed)
        groups: dict[tuple, _Group] = {}
        for name, _, tensor in unique_named_tensors(model.named_parameters(remove_duplicate=False)):
            if not tensor.is_floating_point() or not tensor.numel():
                continue
            t = tensor.detach()
            dtype = torch.float64 if t.dtype == torch.float64 else torch.float32
            group = groups.setdefault((t.device, dtype), _Group(t.device, dtype, self.sample, [], [], []))
            group.names.append(name)
            # a non-contiguous parameter (rare) has no flat view: it is taken whole
            source = sample_view(t.view(-1), self.sample, t.shape[-1] if t.dim() else 1,
                                 generator) if t.is_contiguous() else t
            group.sources.append(source)
            group.numels.append(t.numel())
        self.groups = list(groups.values())
        for group in self.groups:  # a whole non-contiguous tensor widens its group's rows
            group.width = max(group.width, *group.taken) if group.width else 0

    @property
    def names(self) -> list[str]:
        return [n for g in self.groups for n in g.names]

    def new_sample(self) -> Sample:
        return Sample(self.groups)

    def gather(self, into: Sample, slot: int) -> None:
        """Copy the sampled elements of the live tensors into slot `slot` of `into` (one copy call per group)."""
        with torch.no_grad():
            for group, slices in zip(self.groups, into.slices[slot]):
                torch._foreach_copy_(slices, group.sources)
