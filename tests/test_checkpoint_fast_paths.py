"""The speed paths of checkpointing give the same bytes and hashes as the plain ones.

A tensor of 32 MiB or more is held in huge-page-backed memory and hashed while it is copied;
files are hashed in chunks as they are read. These tests pin that those paths agree exactly
with the one-shot hash and with each other.
"""

from __future__ import annotations

import torch

from engine.store.blobs import tensor_hash, tensor_hasher
from engine.store.tensors import copy_and_hash, new_host_buffer, numpy_bytes
from engine.checkpointing import CheckpointManager


class _Big(torch.nn.Module):
    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.big = torch.nn.Parameter(torch.randn(9 << 20, generator=g))  # 36 MiB, odd chunking
        self.small = torch.nn.Parameter(torch.randn(1000, generator=g))


def test_copy_and_hash_equals_one_shot_hash_and_copies_exactly():
    src = torch.randn((3 << 20) + 5).view(torch.uint8)  # not a whole number of chunks
    dst = new_host_buffer(src.nbytes, pin=False)
    hasher = tensor_hasher("U8", (src.nbytes,))
    copy_and_hash(dst, src, hasher)
    assert torch.equal(dst, src)
    assert hasher.hexdigest() == tensor_hash("U8", (src.nbytes,), numpy_bytes(src))


def test_large_buffer_is_usable_memory_of_the_asked_size():
    buf = new_host_buffer((40 << 20) + 3, pin=False)
    assert buf.nbytes == (40 << 20) + 3 and buf.is_contiguous()
    buf.fill_(7)
    assert int(buf[-1]) == 7 and buf.view(torch.uint8)[:8].tolist() == [7] * 8
    assert buf[: 40 << 20].view(torch.float32).numel() == 10 << 20  # aligned for any dtype


def test_snapshot_and_plain_saves_agree_and_big_tensors_restore_exactly(tmp_path):
    model = _Big()
    original = {k: v.detach().clone() for k, v in model.state_dict().items()}
    held = CheckpointManager(model, tmp_path / "a")
    plain = CheckpointManager(model, tmp_path / "b", memory_snapshot=False)
    a, b = held.save_checkpoint(), plain.save_checkpoint()
    hashes = lambda cm, cid: [t.hash for t in cm.store.read_manifest(cid).tensors]  # noqa: E731
    assert hashes(held, a) == hashes(plain, b)
    assert held.memory_snapshot_id == a and held.verify_checkpoint(a)

    with torch.no_grad():
        model.big.mul_(3.0)
        model.small.zero_()
    assert held.restore_checkpoint(a), held.last_error  # from memory
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())

    with torch.no_grad():
        model.big.add_(1.0)
    assert plain.restore_checkpoint(b), plain.last_error  # from disk, verified in chunks
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())

    with torch.no_grad():
        model.big[5] = 0.5
    c = held.save_checkpoint()  # incremental: only the changed tensor is new
    assert held.get_checkpoint(c)["new_bytes"] == model.big.nbytes
    assert hashes(held, c)[0] == tensor_hash(
        "F32", tuple(model.big.shape), model.big.detach().view(torch.uint8).numpy()
    )
