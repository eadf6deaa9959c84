"""Each GPU's memory and utilisation, read for the gauges and the memory check.

Where nvidia-ml-py (`pynvml`) is importable, memory in use and utilisation come from NVML,
the numbers nvidia-smi shows, through torch's own wrappers (which map CUDA indices to NVML
ones under CUDA_VISIBLE_DEVICES). Otherwise memory comes from the CUDA runtime
(`torch.cuda.mem_get_info`: the whole device, every process) and utilisation is unknown.
Nothing here runs on a machine without CUDA: the list is empty.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
from dataclasses import dataclass
from typing import Iterable

import torch

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuReading:
    """One GPU: memory used and total in bytes, utilisation in percent (None without NVML)."""

    index: int
    used: int
    total: int
    utilization: float | None = None

    @property
    def device(self) -> str:
        return f"cuda:{self.index}"

    def as_dict(self) -> dict:
        return {"index": self.index, "used": self.used, "total": self.total, "utilization": self.utilization}


@functools.cache  # asked at every health tick; an install does not appear mid-run
def nvml_present() -> bool:
    return importlib.util.find_spec("pynvml") is not None


def cuda_indices(devices: Iterable[torch.device]) -> list[int]:
    """The CUDA device indices among `devices` (an index-less "cuda" is the current device)."""
    found = set()
    for device in devices:
        if device.type == "cuda":
            found.add(device.index if device.index is not None else torch.cuda.current_device())
    return sorted(found)


def gpu_readings(devices: Iterable[torch.device]) -> list[GpuReading]:
    """A reading of each GPU among `devices`; empty without CUDA."""
    if not torch.cuda.is_available():
        return []
    nvml = nvml_present()
    return [_read(index, nvml) for index in cuda_indices(devices)]


def _read(index: int, nvml: bool) -> GpuReading:
    if nvml:
        try:
            return GpuReading(index, int(torch.cuda.device_memory_used(index)),
                              int(torch.cuda.get_device_properties(index).total_memory),
                              float(torch.cuda.utilization(index)))
        except Exception as exc:  # NVML installed but unusable here (no driver access in a container, say)
            logger.debug("NVML reading of cuda:%d failed (%s); using the CUDA runtime", index, exc)
    free, total = torch.cuda.mem_get_info(index)
    return GpuReading(index, int(total - free), int(total))
