"""Child processes for the crash campaigns (imported by a forkserver, so each starts in milliseconds).

A child saves checkpoints and records memory observations as fast as it can until it is
killed. Each checkpoint's metadata carries the fingerprint of the state it saved, so the
parent can check a restore is exact without trusting anything the child wrote elsewhere.
"""

from __future__ import annotations

import os

import torch

from engine.checkpointing import CheckpointManager
from engine.memory import MemorySystem
from engine.store.store import CheckpointStore
from tests.reliability.helpers import fingerprint


def small_model(seed: int) -> torch.nn.Module:
    """About 0.4 MB of fp32 in a few tensors, with a tie: kills land mid-write often enough."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Embedding(400, 96), torch.nn.Linear(96, 400, bias=False),
                                torch.nn.Linear(400, 96))
    model[1].weight = model[0].weight  # tied, like embed_tokens / lm_head
    return model


def save_until_killed(run_dir: str, seed: int, durable: bool, ready) -> None:
    """Save, record, and now and then delete one of this child's own older checkpoints."""
    model = small_model(seed)
    cm = CheckpointManager(model, os.path.join(run_dir, "checkpoints"), durable=durable)
    memory = MemorySystem(os.path.join(run_dir, "memory"))
    mine: list[str] = []
    step = 0
    while True:
        with torch.no_grad():
            model[step % 3].weight.mul_(1.001)
        mine.append(cm.save_checkpoint({"pid": os.getpid(), "step": step, "fp": fingerprint(model), "child": True}))
        memory.record_observation(f"saved {mine[-1]}", category="crash-test", metadata={"step": step},
                                  tags=["crash", f"pid{os.getpid()}"])
        ready.set()
        if step % 3 == 2 and len(mine) > 2:
            cm.delete_checkpoint(mine.pop(0))  # garbage collection can be interrupted too
        step += 1


class PausingStore(CheckpointStore):
    """The real store, stopping between a save's blob writes and its manifest until told to go on:
    the instant a crash leaves written but unreferenced blobs, held still so a test can act there."""

    def __init__(self, root, paused, resume):
        super().__init__(root)
        self.paused, self.resume = paused, resume

    def commit(self, body, new_blobs=()):
        self.paused.set()
        self.resume.wait()
        return super().commit(body, new_blobs)


def save_paused_before_commit(run_dir: str, seed: int, paused, resume, saved) -> None:
    """One save of a fresh model that stops before its commit; reports (id, fingerprint) if resumed."""
    model = small_model(seed)
    store = PausingStore(os.path.join(run_dir, "checkpoints"), paused, resume)
    cm = CheckpointManager(model, store.root, store=store)
    saved.put((cm.save_checkpoint({"child": True}), fingerprint(model)))
