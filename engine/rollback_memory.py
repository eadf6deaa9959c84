"""The host-memory budget of fast rollback (`--rollback-memory SIZE|auto|off`), decided once per model.

Fast rollback keeps one verified copy of the model's state in host memory (pinned on CUDA):
a rollback is then a memory copy, and a save compares bytes instead of hashing. That copy is
as large as the model (140 GB for a 70B model in bf16), so it is held only when the model's
unique tensor bytes fit the budget; otherwise rollback reads the verified disk checkpoint.

- SIZE: a number of bytes with an optional K, M, G or T suffix (powers of 1024; "16G",
  "512M", "1.5T", "16GiB" and "16GB" alike).
- auto: what fits: the host memory available now, less room for the OS (10 % of the total,
  at least 2 GiB) and less the staging pool.
- off: never hold it.

Torch-free: the console's command line parses the option with it.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.units import human_bytes, parse_size

OPTION = "--rollback-memory"
AUTO = "auto"
OFF = "off"
OS_ROOM_FRACTION = 0.10
OS_ROOM_MIN = 2 << 30


def parse_rollback_memory(value: str | int | None) -> str | int:
    """"auto", "off" or a byte count from the option's text; ValueError naming the option otherwise."""
    if value is None:
        return AUTO
    if isinstance(value, bool):
        raise ValueError(f"{OPTION}: expected SIZE (like 16G or 512M), auto or off, not {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{OPTION}: a size cannot be negative ({value})")
        return value
    text = str(value).strip().lower()
    if text in (AUTO, OFF):
        return text
    try:
        return parse_size(text)
    except ValueError:
        raise ValueError(f"{OPTION}: {value!r} is not a size; use SIZE (a number with an optional K, M, G or T "
                         f"suffix, powers of 1024: 16G, 512M, 1.5T), auto (what fits in free host memory) or off") from None


def rollback_memory_argument(text: str) -> str | int:
    """argparse `type=` for the option: a bad value is a usage error naming the option."""
    import argparse

    try:
        return parse_rollback_memory(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc).removeprefix(f"{OPTION}: ")) from None


HELP = ("host memory for fast rollback's copy of the model: SIZE (16G, 512M; powers of 1024), auto (what fits "
        "in free host memory, leaving room for the OS and the staging pool; default) or off. A model larger than "
        "the budget is rolled back from the verified disk checkpoint")


def auto_budget(available: int, total: int, staging: int = 0) -> int:
    """What fits: `available` host bytes less room for the OS and the staging pool (never below 0)."""
    room = max(OS_ROOM_MIN, int(total * OS_ROOM_FRACTION))
    return max(0, available - room - staging)


def host_memory() -> tuple[int, int]:
    """(available, total) bytes of host memory, from psutil."""
    import psutil

    memory = psutil.virtual_memory()
    return int(memory.available), int(memory.total)


@dataclass(frozen=True)
class RollbackPlan:
    """Whether the fast-rollback copy is held, and why: what the console and headless output say."""

    on: bool
    model_bytes: int  # the model's unique tensor bytes (tied weights once)
    budget: int | None  # bytes allowed; None: off by the option
    setting: str  # the option as given: "auto", "off" or a size
    pinned: bool = False  # page-locked (the model is on CUDA)

    def describe(self) -> str:
        model = human_bytes(self.model_bytes)
        if self.on:
            where = "pinned" if self.pinned else "in host memory"
            return f"fast rollback: on, {model} {where} (budget {human_bytes(self.budget)}, {OPTION} {self.setting})"
        if self.budget is None:
            return f"fast rollback: off ({OPTION} off); rollback reads the verified disk checkpoint"
        return (f"fast rollback: off: the model ({model}) exceeds the budget ({human_bytes(self.budget)}, "
                f"{OPTION} {self.setting}); rollback reads the verified disk checkpoint")


def plan_rollback_memory(setting: str | int | None, model_bytes: int, *, pinned: bool = False, staging: int = 0,
                         memory: tuple[int, int] | None = None) -> RollbackPlan:
    """Decide for a model of `model_bytes`: held when it fits the budget `setting` names.

    `memory` is (available, total) host bytes for auto (default: measured now with psutil).
    """
    spec = parse_rollback_memory(setting)
    shown = str(setting).strip() if isinstance(setting, str) else (spec if isinstance(spec, str) else human_bytes(spec))
    if spec == OFF:
        return RollbackPlan(False, model_bytes, None, shown, pinned)
    if spec == AUTO:
        available, total = memory if memory is not None else host_memory()
        budget = auto_budget(available, total, staging)
    else:
        budget = spec
    return RollbackPlan(model_bytes <= budget, model_bytes, budget, shown, pinned)
