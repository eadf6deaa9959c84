"""Out-of-memory recovery that frees for real, and the memory it gave back, measured.

A caught exception keeps its traceback, the traceback keeps the failed call's frames, and
the frames keep their locals: the activations and temporary tensors that filled the GPU.
Emptying the CUDA cache while the exception is held frees none of it. So recovery first
reduces the exception to what the operator needs to read (`OutOfMemory`: type and message)
and clears every frame along its chain (`forget_exception`), then collects garbage and
empties the cache (`free_memory`), measuring what the CUDA allocator holds before and after.

Public for other parts of the engine and bench/gpu_check.py: `is_out_of_memory`,
`forget_exception`, `cuda_memory`, `free_memory`, `FreedMemory.describe`.
"""

from __future__ import annotations

import gc
import traceback
from dataclasses import dataclass

import torch

from engine.units import human_bytes


_TORCH_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)  # torch.OutOfMemoryError: torch >= 2.5


def is_out_of_memory(exc: BaseException) -> bool:
    """A device allocator's out-of-memory (torch.OutOfMemoryError, CUDA or CPU) or Python's MemoryError."""
    return isinstance(exc, (_TORCH_OOM, MemoryError))


@dataclass(frozen=True)
class OutOfMemory:
    """What is kept of an out-of-memory exception: its type and message, no frames, no tensors."""

    kind: str
    message: str
    allocated: int | None = None  # CUDA bytes allocated when it was caught (None without CUDA)
    reserved: int | None = None

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}" if self.message else self.kind


def forget_exception(exc: BaseException) -> OutOfMemory:
    """Clear the frames of `exc` and of every exception chained to it; return its type and message.

    Frame locals are released (traceback.clear_frames) and the tracebacks, causes and
    contexts dropped, so whatever the failed call allocated is garbage once the caller
    lets go of `exc` itself (it must keep no reference: hold the returned record instead).
    """
    allocated, reserved = cuda_memory()
    record = OutOfMemory(type(exc).__name__, " ".join(str(exc).split()), allocated, reserved)
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if current.__traceback__ is not None:
            traceback.clear_frames(current.__traceback__)
        current.__traceback__ = None
        following = current.__cause__ or current.__context__
        current.__cause__ = current.__context__ = None
        current = following
    return record


def cuda_memory() -> tuple[int | None, int | None]:
    """(allocated, reserved) bytes of the CUDA caching allocator over every visible GPU; (None, None) without CUDA."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None, None
    devices = range(torch.cuda.device_count())
    return (sum(torch.cuda.memory_allocated(d) for d in devices),
            sum(torch.cuda.memory_reserved(d) for d in devices))


@dataclass(frozen=True)
class FreedMemory:
    """What `free_memory` measured: CUDA bytes allocated and reserved, before and after."""

    allocated_before: int | None
    allocated_after: int | None
    reserved_before: int | None
    reserved_after: int | None

    @property
    def freed(self) -> int | None:
        """Bytes of tensors released since the failure was caught (None without CUDA)."""
        if self.allocated_before is None or self.allocated_after is None:
            return None
        return max(0, self.allocated_before - self.allocated_after)

    @property
    def returned(self) -> int | None:
        """Bytes the cache gave back to the driver."""
        if self.reserved_before is None or self.reserved_after is None:
            return None
        return max(0, self.reserved_before - self.reserved_after)

    def describe(self) -> str:
        if self.freed is None:
            return "Collected garbage (CUDA not in use: nothing to measure)"
        return (f"Cleared the CUDA cache and collected garbage: {human_bytes(self.freed)} of tensors freed "
                f"({human_bytes(self.allocated_before)} -> {human_bytes(self.allocated_after)} allocated), "
                f"{human_bytes(self.returned)} returned to the driver")


def free_memory(caught: OutOfMemory | None = None) -> FreedMemory:
    """Collect garbage, then empty the CUDA cache; measured against the state when `caught` was caught.

    Garbage first: tensors kept only by reference cycles are freed by the collector, and
    only then are their blocks in the cache to be given back.
    """
    before = (caught.allocated, caught.reserved) if caught is not None else cuda_memory()
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    after = cuda_memory()
    return FreedMemory(before[0], after[0], before[1], after[1])
