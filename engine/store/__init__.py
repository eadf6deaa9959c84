"""Checkpoint storage: everything under `engine.checkpointing.CheckpointManager` (the guide's API).

errors, manifests (ids, records, the manifest format), blobs (content-addressed tensor files,
the one verified read), store (CheckpointStore: the default on-disk store), interface (the
CheckpointStorage seam), identity (tensor identity, tie groups, the dtype table), tensors
(a model's state as bytes), saving (one tensor of a save), repair (check_and_repair),
snapshot, comparison, export, workers, metadata, pruning, auto_checkpoint, write_tracker
(in-place writes to parameters: auto_checkpoint, engine.edits). None of these imports
engine.checkpointing. The package itself imports nothing, so `engine.store.metadata` and
`engine.store.pruning` stay free of torch.
"""
