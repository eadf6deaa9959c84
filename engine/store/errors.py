"""What can go wrong with a checkpoint; each message says what happened and what to do."""

from __future__ import annotations


class CheckpointError(Exception):
    """Base of every checkpoint failure; the message says what happened and what to do."""


class InvalidCheckpointId(CheckpointError, ValueError):
    """Not a checkpoint id of this directory (malformed, or no such checkpoint)."""


class CheckpointNotFound(InvalidCheckpointId):
    """A well-formed id with no checkpoint of that name in this directory."""


class CheckpointCorrupted(CheckpointError):
    """A manifest or tensor file is damaged: that checkpoint cannot be used."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's tensors (names, shapes, dtypes, ties) do not fit the model."""


class MetadataTooLarge(CheckpointError, ValueError):
    """Checkpoint metadata is larger than MAX_METADATA_BYTES once serialised."""
