"""bench/gpu_check.py's experiment: forward passes forever, to be stopped in the middle of one."""

import torch


def run(ctx):
    ids = torch.randint(0, ctx.model.config.vocab_size, (ctx.options["batch"], ctx.options["seq"]), device=ctx.device)
    with torch.no_grad():
        ctx.model(input_ids=ids)
        ctx.log("forwarding")
        while True:
            ctx.model(input_ids=ids)
