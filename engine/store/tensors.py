"""A model's state as checkpoints see it: named tensors grouped by shared storage, as raw bytes.

The state is `model.state_dict(keep_vars=True)`: every parameter and every *persistent*
buffer (non-persistent buffers such as rotary `inv_freq` are recomputed by the model and are
not state). Names that are the same view (tied weights: `lm_head.weight` is
`model.embed_tokens.weight`) form one group: see engine/store/identity.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from engine.store.errors import CheckpointError
from engine.store.identity import DTYPE_TO_NAME, NAME_TO_DTYPE, tie_groups

_libc = ctypes.CDLL(None)
_libc.memcmp.restype = ctypes.c_int
_libc.memcmp.argtypes = (ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)


@dataclass
class TensorGroup:
    """Names sharing one byte range of one storage; `tensor` is the first name's live tensor."""

    names: list[str]
    tensor: torch.Tensor

    @property
    def name(self) -> str:
        return self.names[0]

    @property
    def dtype_name(self) -> str:
        return dtype_name(self.tensor.dtype, self.name)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.tensor.shape)


def dtype_name(dtype: torch.dtype, what: str = "tensor") -> str:
    try:
        return DTYPE_TO_NAME[dtype]
    except KeyError:
        raise CheckpointError(
            f"{what} has dtype {dtype}, which safetensors cannot store; convert it first"
        ) from None


def model_groups(model: torch.nn.Module) -> list[TensorGroup]:
    """The model's state, one group per distinct tensor, in state_dict order."""
    named = [(n, t) for n, t in model.state_dict(keep_vars=True).items() if isinstance(t, torch.Tensor)]
    for name, t in named:
        if t.device.type == "meta":
            raise CheckpointError(
                f"{name} is on the meta device (not materialised); load the model's weights "
                "before checkpointing it"
            )
    return [TensorGroup(names, t) for names, t in tie_groups(named)]


def byte_view(t: torch.Tensor) -> torch.Tensor:
    """A flat uint8 view of a contiguous tensor's bytes (no copy)."""
    t = t.detach()
    if t.dim() == 0:
        t = t.reshape(1)
    return t.reshape(-1).view(torch.uint8)


def host_bytes(t: torch.Tensor, pin: bool, pool=None) -> tuple[torch.Tensor, bool]:
    """The tensor's bytes on the host: a zero-copy view for CPU tensors, else an async copy.

    Returns (uint8 tensor, copied). Device tensors are copied into a buffer of `pool` (a
    StagingPool, engine/store/staging_pool.py: give it back after use) when given and of the
    same kind as `pin`, else into a new buffer; the copy is non_blocking into pinned memory,
    so the caller synchronises once before reading any of them.
    """
    src = t.detach()
    copied = not src.is_contiguous()
    if copied:
        src = src.contiguous()
    if src.device.type == "cpu":
        return byte_view(src), copied
    if pool is not None and pool.pinned == pin:
        return pool.copy_in(src), True
    out = torch.empty(src.nbytes, dtype=torch.uint8, pin_memory=pin)
    out.copy_(byte_view(src), non_blocking=pin)
    return out, True


_HUGE_PAGE = 2 << 20
_ALWAYS_FRESH = 32 << 20  # glibc serves larger requests from new mmaps, never reused memory
COPY_CHUNK = 1 << 20  # copy and hash this much at a time, while it is in cache


def new_host_buffer(nbytes: int, pin: bool) -> torch.Tensor:
    """Host memory for `nbytes`: pinned when `pin`; huge-page backed when so large that malloc
    would map fresh pages anyway (smaller ones may reuse memory the heap already holds)."""
    if pin or nbytes < _ALWAYS_FRESH:
        return torch.empty(nbytes, dtype=torch.uint8, pin_memory=pin)
    return _huge_page_buffer(nbytes)


def new_host_arena(sizes: list[int], pin: bool) -> list[torch.Tensor]:
    """Buffers of `sizes` bytes carved from one allocation (each 64-byte aligned): huge pages
    back all of them once the total is large, where a buffer each would fault 4 KiB pages
    for every tensor under 32 MiB. The arena lives until the last of them is freed."""
    offsets, total = [], 0
    for n in sizes:
        offsets.append(total)
        total += -(-n // 64) * 64
    arena = new_host_buffer(total, pin)
    return [arena[o : o + n] for o, n in zip(offsets, sizes)]


def _huge_page_buffer(nbytes: int) -> torch.Tensor:
    """Private anonymous memory asking for transparent huge pages (MADV_HUGEPAGE).

    Filling fresh memory costs a page fault per page: with 4 KiB pages that caps a copy into
    new buffers at about 0.9 GB/s here, with 2 MiB pages it runs at about 3.3 GB/s. Only whole
    2 MiB-aligned pages inside the buffer are advised, so at most the size asked is resident.
    The tensor keeps the mapping alive; it is unmapped when the last view is freed.
    """
    mm = mmap.mmap(-1, nbytes + _HUGE_PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    whole = torch.frombuffer(mm, dtype=torch.uint8)
    start = -whole.data_ptr() % _HUGE_PAGE
    huge = nbytes // _HUGE_PAGE * _HUGE_PAGE
    if huge and hasattr(mmap, "MADV_HUGEPAGE"):
        with contextlib.suppress(OSError):  # THP off or unsupported: ordinary pages
            mm.madvise(mmap.MADV_HUGEPAGE, start, huge)
    return whole[start : start + nbytes]


def numpy_bytes(buf: torch.Tensor):
    """A writable buffer-protocol view of a host uint8 tensor (for hashing and file I/O)."""
    return buf.numpy()


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Exact byte equality of two host uint8 tensors (memcmp; NaN payloads compare as bytes)."""
    if a.nbytes != b.nbytes:
        return False
    if a.nbytes == 0:
        return True
    return _libc.memcmp(a.data_ptr(), b.data_ptr(), a.nbytes) == 0


def copy_and_hash(dst: torch.Tensor, src: torch.Tensor, hasher) -> None:
    """Copy `src` into `dst` a chunk at a time, feeding each copied chunk to `hasher` while it
    is still in cache (one pass over memory instead of two); memmove releases the GIL. Hashes
    the copy, not the source, so the hash is exactly that of the bytes kept."""
    out = numpy_bytes(dst).data
    dst_ptr, src_ptr = dst.data_ptr(), src.data_ptr()
    for start in range(0, src.nbytes, COPY_CHUNK):
        n = min(COPY_CHUNK, src.nbytes - start)
        ctypes.memmove(dst_ptr + start, src_ptr + start, n)
        hasher.update(out[start : start + n])


def copy_into(dst: torch.Tensor, src: torch.Tensor, dtype: str, shape) -> None:
    """Put verified host bytes `src` (uint8) into the model's tensor `dst` (same dtype and shape).

    Contiguous host tensors take a memmove, which releases the GIL (several run at once on
    the I/O pool) and skips torch's per-call dispatch and intra-op threading: measured here
    at about 3x `copy_` on a loaded 2-core machine. Device tensors and strided views go through
    `copy_` (non_blocking from pinned memory; the caller synchronises).
    """
    if dst.device.type == "cpu" and dst.is_contiguous() and dst.nbytes == src.nbytes:
        if dst.nbytes:
            ctypes.memmove(dst.data_ptr(), src.data_ptr(), dst.nbytes)
        return
    source = as_tensor(src, dtype, shape)
    with torch.no_grad():
        dst.copy_(source, non_blocking=source.is_pinned())


def as_tensor(buf: torch.Tensor, dtype: str, shape) -> torch.Tensor:
    """View host bytes as the stored dtype and shape."""
    t = buf.view(NAME_TO_DTYPE[dtype])
    return t.reshape(shape)


def sync_devices(tensors) -> None:
    """One synchronise for every CUDA device among `tensors` (after non_blocking copies)."""
    devices = {t.device for t in tensors if t.device.type == "cuda"}
    for d in devices:
        torch.cuda.synchronize(d)


_tracking = threading.local()


@contextlib.contextmanager
def untracked() -> Iterator[None]:
    """Writes made inside (restores, the store's own copies) are not user modifications."""
    depth = getattr(_tracking, "depth", 0)
    _tracking.depth = depth + 1
    try:
        yield
    finally:
        _tracking.depth = depth


def tracking_suspended() -> bool:
    return getattr(_tracking, "depth", 0) > 0
