"""One tensor of a save: proven unchanged against the held copy (memcmp) or hashed, then stored.

Runs on the I/O pool, one call per distinct tensor (CheckpointManager._save); hashing,
comparing and file I/O release the GIL.
"""

from __future__ import annotations

from engine.store.blobs import TensorDigests, tensor_checksum, tensor_digests
from engine.store.interface import CheckpointStorage
from engine.store.tensors import copy_and_hash, new_host_buffer, numpy_bytes, same_bytes


def save_tensor(store: CheckpointStorage, job):
    """Hash (or prove unchanged), then store unless proven stored.

    Returns (hash, xxh3, what the store found or None if another name of this save
    stored the same bytes, held buf)."""
    group, dt, host, copied, held, follow, claimed = job
    if held is not None and held.dtype == dt and held.shape == group.shape and same_bytes(
        host, held.buf
    ):
        digest, checksum, source, keep = held.hash, held.xxh3, host, held.buf
        if checksum is None:  # held from a manifest older than the checksum field
            checksum = tensor_checksum(dt, group.shape, numpy_bytes(host))
    else:
        if follow and not copied:  # the snapshot needs its own copy of the live bytes
            source = new_host_buffer(host.nbytes, host.is_pinned())
            digests = TensorDigests(dt, group.shape)
            copy_and_hash(source, host, digests)
            digest, checksum = digests.hexdigests()
        else:
            source = host
            digest, checksum = tensor_digests(dt, group.shape, numpy_bytes(source))
        keep = source if follow else None
    found = None
    if claimed.first(digest):
        found = store.put_blob(digest, dt, group.shape, numpy_bytes(source))
    return digest, checksum, found, keep
