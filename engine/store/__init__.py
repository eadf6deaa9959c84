"""Checkpoint storage: content-addressed tensor blobs, JSON manifests, tensor identity, metadata, pruning.

`engine.checkpointing.CheckpointManager` (the guide's API) is the front; this
package is what it stands on. Imports no torch at package import.
"""
