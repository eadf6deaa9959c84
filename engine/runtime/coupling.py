"""Tied weights as the operator sees them: the groups, and modifications that touched one.

When an experiment records a modification of a layer that shares storage with
others, the change reaches every layer of the group; `Coupling` counts those
and publishes a CouplingView after each.
"""

from __future__ import annotations

import collections
from typing import Any

from engine.events import CouplingView


class Coupling:
    """Coupled-modification count and recent descriptions; runs in the engine thread."""

    def __init__(self, core: Any):
        self._core = core  # the EngineCore: its inspector, step and publish()
        self.coupled_modifications = 0
        self.recent: collections.deque[str] = collections.deque(maxlen=8)

    def publish(self) -> None:
        inspector = self._core.inspector
        if inspector is None:
            return
        groups = tuple(tuple(g) for g in inspector.get_shared_weights())
        storages = []
        for entry in inspector.coupling_report():
            storage = entry.get("storage")
            if isinstance(storage, str):
                storages.append(storage)
            else:
                storages.append(" ".join(f"{k}={v}" for k, v in entry.items() if k != "names"))
        self._core.publish(CouplingView(groups=groups, storages=tuple(storages),
                                        coupled_modifications=self.coupled_modifications,
                                        recent=tuple(reversed(self.recent))))

    def modification_recorded(self, layer_name: str) -> None:
        inspector = self._core.inspector
        try:
            coupled = inspector.get_shared_layers(layer_name) if inspector is not None else []
        except ValueError:
            coupled = []
        if coupled:
            self.coupled_modifications += 1
            self.recent.append(f"step {self._core.step}: {layer_name} ↔ {', '.join(coupled)}")
            self.publish()
