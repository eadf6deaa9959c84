"""bench/gpu_check.py's experiment: allocate 1 GiB blocks until the allocator fails (the engine recovers and reruns).

The first attempt logs what was allocated before and at the failure; the rerun logs what is still
allocated, which shows whether the failed attempt's memory was given back. On the CPU, where nothing
bounds lazily mapped memory, one impossible allocation fails instead, raised as torch's OutOfMemoryError.
"""

import torch


def run(ctx):
    device = torch.device(ctx.device)
    cuda = device.type == "cuda"
    used = (lambda: torch.cuda.memory_allocated(device)) if cuda else (lambda: 0)
    if ctx.restarts:
        ctx.log(f"oom_retry {used()}")
        return
    ctx.log(f"oom_before {used()}")
    blocks = []
    try:
        if cuda:
            while True:
                blocks.append(torch.empty(1 << 30, dtype=torch.uint8, device=device))
        blocks = [torch.ones(16 << 20, dtype=torch.uint8) for _ in range(4)]
        torch.empty(1 << 50, dtype=torch.uint8)  # more than any machine has: the CPU allocator fails
    except RuntimeError as exc:
        ctx.log(f"oom_peak {used()} blocks {len(blocks)}")
        if isinstance(exc, torch.OutOfMemoryError):
            raise
        raise torch.OutOfMemoryError(f"the CPU allocator failed: {exc}") from None
