"""Where a model's weights live: one device, or spread over every visible GPU (`--device auto`).

A spread model (transformers' `device_map="auto"`, placed by accelerate) has its layers on
several GPUs; nothing in the engine may then move the whole model to one device. Inputs go
to the device of the input embeddings (the first layer), and each tensor is read, saved and
restored on its own device (engine/health_scan.py, engine/store/). Layers that accelerate
would offload to host memory or disk are refused: they are not materialised weights, so they
could be neither scanned nor checkpointed.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch

logger = logging.getLogger(__name__)

AUTO = "auto"


def wants_spread(value: Any) -> bool:
    """True for the `--device auto` spelling (spread over the visible GPUs)."""
    return isinstance(value, str) and value.strip().lower() == AUTO


def spread_possible() -> bool:
    """Whether `--device auto` can spread: CUDA is present; otherwise auto means the CPU (logged once per load)."""
    if torch.cuda.is_available():
        return True
    logger.info("--device auto: this torch (%s) sees no CUDA GPU, so the model loads on the CPU", torch.__version__)
    return False


def load_kwargs(device: torch.device, spread: bool) -> dict[str, Any]:
    """`from_pretrained` placement arguments: spread over the GPUs, straight onto one GPU, or the CPU default."""
    if spread:
        return {"device_map": AUTO}
    if device.type == "cpu":
        return {}
    return {"device_map": {"": str(device)}}


def model_devices(model: torch.nn.Module) -> list[torch.device]:
    """Every device holding one of the model's parameters or buffers, in a stable order (cpu, cuda:0, cuda:1...)."""
    found = {t.device for t in model.parameters()} | {t.device for t in model.buffers()}
    return sorted(found, key=_device_order)


def devices_label(devices: Iterable[torch.device]) -> str:
    """Where a model is, for the state event and the header: "cuda:0", or "cuda:0+cuda:1" for a spread model."""
    return "+".join(str(d) for d in sorted(set(devices), key=_device_order))


def where(model: torch.nn.Module | None, device: torch.device | None) -> str:
    """The state event's device: every device the model is on; before a model is loaded, the one asked for."""
    if model is not None:
        return devices_label(model_devices(model))
    return "" if device is None else str(device)


def _device_order(device: torch.device) -> tuple[str, int]:
    return device.type, -1 if device.index is None else device.index


def input_device(model: torch.nn.Module) -> torch.device:
    """Where the model's inputs go: the input embeddings' device (the first layer), else the first parameter's."""
    embeddings = getattr(model, "get_input_embeddings", None)
    try:
        weight = embeddings().weight if embeddings is not None else None
    except (AttributeError, NotImplementedError):
        weight = None
    if isinstance(weight, torch.Tensor):
        return weight.device
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def offloaded(model: torch.nn.Module) -> list[str]:
    """What accelerate left unmaterialised: meta parameters, and modules offloaded to "cpu"/"disk" beside GPUs."""
    names = [name for name, p in model.named_parameters() if p.device.type == "meta"]
    device_map = getattr(model, "hf_device_map", None) or {}
    if any(str(place) not in ("cpu", "disk", "meta") for place in device_map.values()):
        names += [name or "(the whole model)" for name, place in device_map.items() if str(place) in ("cpu", "disk")]
    return sorted(set(names))


def move_to_cpu(model: torch.nn.Module) -> torch.nn.Module:
    """Gather a model on the CPU (the fallback after an out-of-memory), spread or not.

    A spread model carries accelerate's hooks, which would keep moving activations to the
    GPUs it left (and hold offloaded weights); they are removed first.
    """
    if any(hasattr(m, "_hf_hook") for m in model.modules()):
        from accelerate.hooks import remove_hook_from_submodules

        remove_hook_from_submodules(model)  # offloaded weights are put back as they are detached
    if "hf_device_map" in vars(model):
        del model.hf_device_map  # transformers reads any map it finds (save_pretrained, generate)
    return model.cpu()


def describe(model: torch.nn.Module) -> str:
    """One line: how many parameters each device holds, e.g. "cuda:0 1.20 B, cuda:1 1.10 B"."""
    counts: dict[torch.device, int] = {}
    for p in model.parameters():
        counts[p.device] = counts.get(p.device, 0) + p.numel()
    def amount(n: int) -> str:
        return f"{n / 1e9:.2f} B" if n >= 100_000_000 else f"{n / 1e6:.2f} M"

    return ", ".join(f"{d} {amount(counts[d])}" for d in model_devices(model) if d in counts)


def synchronize(model: torch.nn.Module) -> None:
    """Wait for every CUDA device the model uses (after a load or a copy)."""
    if not torch.cuda.is_available():
        return
    for device in model_devices(model):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
