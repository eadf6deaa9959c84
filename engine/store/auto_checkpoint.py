"""AutoCheckpointer: checkpoints every N modifications it detects by itself (the guide's wrapper).

    auto_cp = AutoCheckpointer(model, "data/auto_checkpoints", frequency=10, max_checkpoints=20)
    with auto_cp:
        for i in range(50):
            modify_layer(i)          # declares nothing; 5 checkpoints result

Inside the ``with`` block a WriteTracker (engine/store/write_tracker.py) watches every aten
operator call on this thread; one that writes a tensor overlapping the bytes of one of the
model's parameters is a write to the model, whatever route it took:
``p.data.mul_()``, ``torch.no_grad()``, ``copy_``, ``p[...] = x``, ``nn.init.*_``.

What one modification is: one operator call that writes into one or more parameter
storages (a tied pair is one storage, so it counts once). ``with auto_cp.modification():``
(or ``@auto_cp.modification()``) groups all writes inside into one modification; use it when
one logical change takes several in-place calls (e.g. ``nn.init.orthogonal_``).

Not seen: writes from other threads, through numpy views of parameters, and rebinding a
parameter (``module.weight = Parameter(...)``, ``p.data = t``); buffers are not watched
(their in-place updates, e.g. running statistics, are not weight modifications).
Overhead: one Python call per operator inside the block (see bench/checkpoints.py).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

from engine.store.errors import CheckpointError
from engine.store.identity import SpanIndex
from engine.store.metadata import CheckpointState, checkpoint_metadata, encode_metadata
from engine.store.pruning import beyond_newest
from engine.store.tensors import untracked
from engine.store.write_tracker import WriteTracker

class AutoCheckpointer:
    """Context manager that checkpoints after every `frequency`-th detected modification.

    Keeps the newest `max_checkpoints` checkpoints it made itself (older ones of its own are
    deleted; checkpoints made by anyone else are never touched). Saves nothing on exit: the
    modifications after the last automatic checkpoint are the caller's to save. `metadata`
    is added to every automatic checkpoint's metadata (state "auto", tags ["auto"]).
    Pass `manager=` to share an existing CheckpointManager (then `checkpoint_dir` must be
    its directory or None). Without one, `open_manager` opens it: engine.checkpointing's
    AutoCheckpointer opens a CheckpointManager (imported there, not here: no import cycle).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        checkpoint_dir: str | os.PathLike | None,
        frequency: int = 10,
        max_checkpoints: int = 20,
        *,
        metadata: dict | None = None,
        manager=None,
        memory_snapshot: bool = True,
    ):
        for name, value in (("frequency", frequency), ("max_checkpoints", max_checkpoints)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
        if manager is None:
            if checkpoint_dir is None:
                raise ValueError("give checkpoint_dir (or manager=)")
            manager = self.open_manager(model, checkpoint_dir, memory_snapshot)
        elif manager.model is not model:
            raise ValueError("manager= must be a CheckpointManager of the same model")
        self.model = model
        self.manager = manager
        self.frequency = frequency
        self.max_checkpoints = max_checkpoints
        self.metadata = encode_metadata(metadata)
        self.modifications = 0
        self.checkpoints: list[str] = []
        self._since_checkpoint = 0
        self._group_depth = 0
        self._group_wrote = False
        self._parameters = SpanIndex(())
        self._mode: WriteTracker | None = None

    def open_manager(self, model: torch.nn.Module, checkpoint_dir, memory_snapshot: bool):
        """The CheckpointManager to save with, when none was given."""
        raise TypeError("give manager= (engine.checkpointing.AutoCheckpointer opens one from checkpoint_dir)")

    # ------------------------------------------------------------ context

    def __enter__(self) -> AutoCheckpointer:
        if self._mode is not None:
            raise RuntimeError("this AutoCheckpointer is already active; it is not re-entrant")
        self._index_parameters()
        self._mode = WriteTracker(self._parameters_touched, after=self._note_write)
        self._mode.__enter__()
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        mode, self._mode = self._mode, None
        if mode is not None:
            mode.__exit__(exc_type, exc, tb)

    @contextlib.contextmanager
    def modification(self) -> Iterator[AutoCheckpointer]:
        """Count every parameter write inside as one modification."""
        self._group_depth += 1
        try:
            yield self
        finally:
            self._group_depth -= 1
            if self._group_depth == 0 and self._group_wrote:
                self._group_wrote = False
                self._count()

    # ------------------------------------------------------------ detection

    def _index_parameters(self) -> None:
        """Where every parameter's bytes lie (tied and overlapping ones included)."""
        self._parameters = SpanIndex(self.model.parameters())

    def _parameters_touched(self, t: torch.Tensor) -> bool:
        return self._parameters.touches(t)

    def _note_write(self, _hits=None) -> None:
        if self._group_depth:
            self._group_wrote = True
        else:
            self._count()

    def _count(self) -> None:
        self.modifications += 1
        self._since_checkpoint += 1
        if self._since_checkpoint >= self.frequency:
            self._checkpoint()

    # ------------------------------------------------------------ saving

    def _checkpoint(self) -> None:
        n = self.modifications
        metadata = {
            **checkpoint_metadata(CheckpointState.AUTO, f"automatic checkpoint after {n} modifications",
                                  modifications=n),
            **self.metadata,
        }
        with untracked():
            try:
                checkpoint_id = self.manager.save_checkpoint(metadata)
            except Exception as exc:
                raise CheckpointError(
                    f"automatic checkpoint after {n} modifications failed: {exc}. The "
                    "modification itself was applied; fix the cause and save manually."
                ) from exc
            self._since_checkpoint = 0
            self.checkpoints.append(checkpoint_id)
            for old in beyond_newest(self.checkpoints, self.max_checkpoints):
                self.checkpoints.remove(old)
                self.manager.delete_checkpoint(old)
            self._index_parameters()  # parameters replaced meanwhile are watched from now on
