"""The staging pool: the same buffers every save, bounded, given back; plain host memory on CPU-only torch.

A model on the CPU is read in place, so no save here stages through the pool; these tests
drive the pool the way CheckpointManager._save does on CUDA (copy_in per tensor, then settle
against the snapshot that the save keeps), with a real module's tensors (sizes that repeat, like a model's layers).
"""

from __future__ import annotations

import pytest
import torch

from engine.store.staging_pool import StagingPool
from engine.store.tensors import host_bytes, model_groups


def _save_through(pool: StagingPool, tensors: list[torch.Tensor], held: list[torch.Tensor] = ()) -> list[torch.Tensor]:
    """One save's staging: every tensor copied into a pool buffer, checked, then settled (nothing kept)."""
    staged = [pool.copy_in(t) for t in tensors]
    for buf, t in zip(staged, tensors):
        assert torch.equal(buf, t.detach().reshape(-1).view(torch.uint8))
    pool.settle(staged, kept=held)
    return staged


def test_the_second_save_gets_the_same_buffers_and_n_saves_do_not_grow_it():
    layers = torch.nn.Sequential(*(torch.nn.Linear(32, 32) for _ in range(4)), torch.nn.Linear(32, 8))
    tensors = [g.tensor for g in model_groups(layers)]
    pool = StagingPool(limit=1 << 30, pinned=False)
    first = {b.data_ptr() for b in _save_through(pool, tensors)}
    owned, allocations = pool.owned_bytes, pool.allocations
    assert owned == sum(t.nbytes for t in tensors) and allocations == len(tensors)
    assert {b.data_ptr() for b in _save_through(pool, tensors)} == first
    for _ in range(5):
        _save_through(pool, tensors)
    assert pool.owned_bytes == owned and pool.allocations == allocations and pool.free_bytes == owned


def test_the_pool_owns_at_most_its_limit_and_beyond_it_lends_buffers_it_does_not_keep():
    pool = StagingPool(limit=3000, pinned=False)
    a, b = pool.take(1000), pool.take(1000)
    over = pool.take(1500)  # 3500 > 3000: a plain buffer outside the pool
    assert pool.owns(a) and pool.owns(b) and not pool.owns(over) and pool.owned_bytes == 2000
    for buf in (a, b, over):
        pool.give(buf)
    assert pool.owned_bytes == 2000 and pool.free_bytes == 2000
    big = pool.take(2500)  # free buffers of another size make room
    assert pool.owns(big) and pool.owned_bytes <= 3000
    with pytest.raises(ValueError, match="negative"):
        StagingPool(limit=-1)


def test_a_kept_buffer_leaves_the_pool_and_the_replaced_snapshot_buffer_joins_it():
    pool = StagingPool(limit=1 << 20, pinned=False)
    weight = torch.randn(64, 64)
    old_held = torch.empty(weight.nbytes, dtype=torch.uint8)  # what the previous snapshot held
    staged = pool.copy_in(weight)
    pool.settle([staged], kept=[staged], dropped=[old_held])  # the tensor changed: the snapshot keeps the copy
    assert not pool.owns(staged) and pool.owns(old_held)
    assert pool.take(weight.nbytes).data_ptr() == old_held.data_ptr()  # the next save stages into it
    view = torch.empty(2 * weight.nbytes, dtype=torch.uint8)[: weight.nbytes]
    pool.settle([], kept=[], dropped=[view])  # nothing staged (a CPU model): nothing adopted
    assert not pool.owns(view)


def test_release_gives_back_every_free_buffer():
    pool = StagingPool(limit=1 << 20, pinned=False)
    lent = pool.take(4096)
    pool.give(pool.take(8192))
    pool.release()
    assert pool.owned_bytes == 4096 and pool.free_bytes == 0  # the lent one is still the borrower's
    pool.give(lent)
    pool.release()
    assert pool.owned_bytes == 0


def test_host_bytes_uses_the_pool_only_for_device_tensors():
    pool = StagingPool(limit=1 << 20, pinned=False)
    cpu = torch.randn(8, 8)
    view, copied = host_bytes(cpu, pin=False, pool=pool)
    assert not copied and view.data_ptr() == cpu.data_ptr() and pool.allocations == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_pinned_staging_on_cuda_reuses_page_locked_buffers():
    pool = StagingPool(limit=1 << 30)
    tensor = torch.randn(1024, 1024, device="cuda")
    buf, copied = host_bytes(tensor, pin=True, pool=pool)
    torch.cuda.synchronize()
    assert copied and buf.is_pinned() and torch.equal(buf.view(torch.float32).reshape(1024, 1024), tensor.cpu())
    pool.give(buf)
    again, _ = host_bytes(tensor, pin=True, pool=pool)
    assert again.data_ptr() == buf.data_ptr() and pool.allocations == 1
