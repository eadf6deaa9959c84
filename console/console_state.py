"""What the console knows about the engine: every drained event folded into one place.

The UI pulls a batch of events, folds them here, then redraws each panel once
from the result, so a burst of events costs one redraw, not one per event.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, replace

from engine import events as ev

HISTORY = 120  # samples kept per gauge for its sparkline
MAX_STREAM = 5000  # alert-stream entries kept (oldest dropped first)

ACTIVE_STATES = (ev.EngineState.RUNNING, ev.EngineState.PAUSED, ev.EngineState.STOPPING, ev.EngineState.RECOVERING)


@dataclass(frozen=True, slots=True)
class StreamEntry:
    """One line of the alert stream: an alert, an experiment log line, or a checkpoint event."""

    time: float
    severity: str
    source: str
    text: str


@dataclass
class Batch:
    """What one batch of events changed: panel names to redraw, and entries to act on."""

    changed: set[str] = field(default_factory=set)
    stream: list[StreamEntry] = field(default_factory=list)
    done: list[ev.CommandDone] = field(default_factory=list)
    comparisons: list[ev.ComparisonReady] = field(default_factory=list)
    plans: list[ev.RevertPlanned] = field(default_factory=list)
    answers: bool = False  # the engine's state changed or a command was answered: what an operator waits for


class ConsoleState:
    def __init__(self) -> None:
        self.engine: ev.EngineStateChanged | None = None
        self.health: ev.HealthSnapshot | None = None
        self.history: dict[str, deque[float]] = {}  # gauge name -> its recent values
        self.stream: deque[StreamEntry] = deque(maxlen=MAX_STREAM)
        self.checkpoints: tuple[ev.CheckpointInfo, ...] = ()
        self.disk_usage = 0
        self.coupling: ev.CouplingView | None = None
        self.policy: ev.PolicyInfo | None = None
        self.drift: ev.DriftMap | None = None
        self.progress: dict[str, ev.Progress] = {}
        self.rollback_memory: ev.RollbackMemory | None = None  # fast rollback held in memory, or why not
        self.step: ev.ExperimentStep | None = None
        self.comparisons: dict[tuple[str, str], ev.ComparisonReady] = {}
        self.edits: dict[int, ev.EditInfo] = {}  # edit-journal entries by id, oldest first
        self.latest_time = 0.0

    @property
    def engine_state(self) -> ev.EngineState:
        return self.engine.state if self.engine else ev.EngineState.STARTING

    @property
    def experiment_active(self) -> bool:
        return self.engine_state in ACTIVE_STATES

    def checkpoint(self, checkpoint_id: str) -> ev.CheckpointInfo | None:
        return next((c for c in self.checkpoints if c.id == checkpoint_id), None)

    def baseline(self) -> ev.CheckpointInfo | None:
        """The newest checkpoint whose state is "baseline"."""
        return next((c for c in reversed(self.checkpoints) if c.state == "baseline"), None)

    def apply_all(self, events: list[ev.Event]) -> Batch:
        batch = Batch()
        for event in events:
            self.apply(event, batch)
        return batch

    def apply(self, event: ev.Event, batch: Batch) -> None:
        self.latest_time = max(self.latest_time, getattr(event, "time", 0.0))
        if isinstance(event, ev.EngineStateChanged):
            self.engine = event
            batch.changed.add("header")
            batch.answers = True
        elif isinstance(event, ev.HealthSnapshot):
            self._apply_health(event)
            batch.changed.add("health")
        elif isinstance(event, ev.Alert):
            self._add(batch, StreamEntry(event.time, event.severity, event.source, event.message))
        elif isinstance(event, ev.LogLine):
            self._add(batch, StreamEntry(event.time, "INFO", f"log:{event.source}", event.text))
        elif isinstance(event, ev.CheckpointList):
            self.checkpoints, self.disk_usage = event.checkpoints, event.disk_usage
            batch.changed.add("checkpoints")
        elif isinstance(event, ev.CheckpointSaved):
            self._upsert(event.checkpoint)
            batch.changed.add("checkpoints")
            if event.origin != "engine":
                self._add(batch, StreamEntry(event.time, "INFO", event.origin, f"checkpoint {event.checkpoint.id} appeared"))
        elif isinstance(event, ev.CheckpointDeleted):
            self.checkpoints = tuple(c for c in self.checkpoints if c.id != event.checkpoint_id)
            batch.changed.add("checkpoints")
        elif isinstance(event, ev.CheckpointRestored):
            severity, verb = ("INFO", "restored") if event.ok else ("HIGH", "restore FAILED for")
            text = f"{verb} {event.checkpoint_id}" + (f": {event.message}" if event.message else "")
            self._add(batch, StreamEntry(event.time, severity, "restore", text))
        elif isinstance(event, ev.CouplingView):
            self.coupling = event
            batch.changed.add("coupling")
        elif isinstance(event, ev.DriftMap):
            self.drift = event
            batch.changed.add("drift")
        elif isinstance(event, ev.PolicyInfo):
            self.policy = event
        elif isinstance(event, ev.Progress):
            if event.finished:
                self.progress.pop(event.task, None)
            else:
                self.progress[event.task] = event
            batch.changed.add("progress")
        elif isinstance(event, ev.RollbackMemory):
            self.rollback_memory = event
            self._add(batch, StreamEntry(event.time, "INFO", "memory", event.message))
            batch.changed.add("header")
        elif isinstance(event, ev.ExperimentStep):
            self.step = event
            batch.changed.add("header")
        elif isinstance(event, ev.ComparisonReady):
            self.comparisons[(event.checkpoint_a, event.checkpoint_b)] = event
            batch.comparisons.append(event)
        elif isinstance(event, ev.EditRecorded):
            self._apply_edit(event.edit)
            batch.changed.add("edits")
        elif isinstance(event, ev.RevertPlanned):
            batch.plans.append(event)
        elif isinstance(event, ev.CommandDone):
            batch.done.append(event)
            batch.answers = True

    def _apply_edit(self, info: ev.EditInfo) -> None:
        """Keep the entry; a revert also marks the edit it undid."""
        known = self.edits.get(info.id)
        self.edits[info.id] = info
        if known is None and self.edits and info.id < max(self.edits):
            self.edits = dict(sorted(self.edits.items()))
        undone = self.edits.get(info.reverts) if info.reverts is not None else None
        if undone is not None and undone.reverted_by is None:
            self.edits[undone.id] = replace(undone, reverted_by=info.id)

    def _add(self, batch: Batch, entry: StreamEntry) -> None:
        self.stream.append(entry)
        batch.stream.append(entry)
        batch.changed.add("stream")

    def _upsert(self, info: ev.CheckpointInfo) -> None:
        others = [c for c in self.checkpoints if c.id != info.id]
        self.checkpoints = tuple(sorted([*others, info], key=lambda c: c.created))

    def _apply_health(self, h: ev.HealthSnapshot) -> None:
        self.health = h
        for gauge in h.gauges:
            if gauge.value is not None:
                self.history.setdefault(gauge.name, deque(maxlen=HISTORY)).append(gauge.value)
