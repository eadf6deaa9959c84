"""What a console must see first when it attaches: the engine's current picture, kept from its events.

The server feeds every published event to `EngineView.apply` and, when a
client attaches (or falls behind and is resynchronised), hands it
`snapshot_events()`: the state, the checkpoint list, the coupling, the health
history the gauges draw (oldest first, so the sparklines fill), progress,
the experiment step and the recent alerts, as ordinary events. Alerts from
earlier engines in the same run directory come from its alert journal.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
from pathlib import Path

from engine import events as ev

log = logging.getLogger(__name__)

HEALTH_HISTORY = 120  # matches the console's gauge history
RECENT_ALERTS = 1000
RECENT_EDITS = 200  # edit-journal entries a console is sent on attach (engine.edits.report.RECENT_EDITS)
JOURNAL = "alerts.jsonl"


class EngineView:
    """The latest of everything a console shows; not thread-safe (the server serialises calls)."""

    def __init__(self, run_dir: Path | None, started_at: float):
        self.run_dir = run_dir
        self.started_at = started_at
        self.state: ev.EngineStateChanged | None = None
        self.health: collections.deque[ev.HealthSnapshot] = collections.deque(maxlen=HEALTH_HISTORY)
        self.checkpoints: ev.CheckpointList | None = None
        self.coupling: ev.CouplingView | None = None
        self.policy: ev.PolicyInfo | None = None
        self.drift: ev.DriftMap | None = None
        self.step: ev.ExperimentStep | None = None
        self.progress: dict[str, ev.Progress] = {}
        self.alerts: collections.deque[ev.Alert] = collections.deque(maxlen=RECENT_ALERTS)
        self.outcome: ev.RunOutcome | None = None
        self.restores = 0  # successful restores and rollbacks so far
        self.rollback_memory: ev.RollbackMemory | None = None
        self.edits: dict[int, ev.EditRecorded] = {}  # the newest journal entries by id, oldest first

    def apply(self, event: ev.Event) -> None:
        if isinstance(event, ev.EngineStateChanged):
            self.state = event
        elif isinstance(event, ev.HealthSnapshot):
            self.health.append(event)
        elif isinstance(event, ev.Alert):
            self.alerts.append(event)
        elif isinstance(event, ev.CheckpointList):
            self.checkpoints = event
        elif isinstance(event, ev.CheckpointSaved):
            self._edit_checkpoints(lambda cs: sorted([c for c in cs if c.id != event.checkpoint.id] + [event.checkpoint],
                                                     key=lambda c: c.created))
        elif isinstance(event, ev.CheckpointDeleted):
            self._edit_checkpoints(lambda cs: [c for c in cs if c.id != event.checkpoint_id])
        elif isinstance(event, ev.CheckpointRestored):
            self.restores += int(event.ok)
        elif isinstance(event, ev.CouplingView):
            self.coupling = event
        elif isinstance(event, ev.PolicyInfo):
            self.policy = event
        elif isinstance(event, ev.DriftMap):
            self.drift = event
        elif isinstance(event, ev.ExperimentStep):
            self.step = event
        elif isinstance(event, ev.RunOutcome):
            self.outcome = event
        elif isinstance(event, ev.RollbackMemory):
            self.rollback_memory = event
        elif isinstance(event, ev.EditRecorded):
            self._record_edit(event)
        elif isinstance(event, ev.Progress):
            if event.finished:
                self.progress.pop(event.task, None)
            else:
                self.progress[event.task] = event

    def _record_edit(self, event: ev.EditRecorded) -> None:
        """Keep the entry (a revert also marks the edit it undid) and only the newest RECENT_EDITS."""
        self.edits.pop(event.edit.id, None)
        self.edits[event.edit.id] = event
        undone = self.edits.get(event.edit.reverts) if event.edit.reverts is not None else None
        if undone is not None and undone.edit.reverted_by != event.edit.id:
            marked = dataclasses.replace(undone.edit, reverted_by=event.edit.id)
            self.edits[marked.id] = dataclasses.replace(undone, edit=marked)
        while len(self.edits) > RECENT_EDITS:
            del self.edits[min(self.edits)]
        self.edits = dict(sorted(self.edits.items()))

    def _edit_checkpoints(self, edit) -> None:
        current = self.checkpoints or ev.CheckpointList()
        self.checkpoints = dataclasses.replace(current, checkpoints=tuple(edit(list(current.checkpoints))))

    def snapshot_events(self, earlier_alerts: list[ev.Alert] = ()) -> list[ev.Event]:
        """The picture as events, in the order a console should apply them."""
        out: list[ev.Event] = []
        out.extend(earlier_alerts)
        out.extend(self.alerts)
        for item in (self.rollback_memory, self.checkpoints, self.coupling, self.policy, self.drift, *self.edits.values(),
                     *self.health, *self.progress.values(), self.step, self.state):
            if item is not None:
                out.append(item)
        return out

    @property
    def current_step(self) -> int:
        return self.step.step if self.step else (self.state.step if self.state else 0)

    def mark(self, now: float) -> tuple[float, int, int]:
        """What `away_summary` later compares with: the time, the step, the restores so far."""
        return now, self.current_step, self.restores

    def away_summary(self, mark: tuple[float, int, int]) -> dict:
        """What happened since `mark` (the last console left): alerts by severity, checkpoints, restores, steps."""
        since, step, restores = mark
        alerts = collections.Counter(a.severity for a in self.alerts if a.time >= since)
        checkpoints = sum(1 for c in (self.checkpoints.checkpoints if self.checkpoints else ()) if c.created >= since)
        return {"since": since, "alerts": dict(alerts), "checkpoints": checkpoints,
                "restores": self.restores - restores, "steps": max(0, self.current_step - step)}

    def summary(self) -> dict:
        """State, model, experiment and step, for `redline ps` and the hello answer."""
        state = self.state
        return {
            "state": state.state.value if state else ev.EngineState.STARTING.value,
            "model": state.model if state else "",
            "experiment": state.experiment if state else None,
            "step": self.current_step,
            "started_at": self.started_at,
        }


def journal_alerts(run_dir: Path | None, before: float, limit: int = RECENT_ALERTS) -> list[ev.Alert]:
    """The last `limit` alerts of the run directory's journal raised before `before` (earlier engines)."""
    if run_dir is None:
        return []
    path = Path(run_dir) / JOURNAL
    if not path.is_file():
        return []
    from engine.alert_journal import read_recent

    def earlier(record: dict) -> bool:
        when = record.get("time")
        return isinstance(when, (int, float)) and not isinstance(when, bool) and when < before

    try:
        records = read_recent(path, limit, keep=earlier)
    except OSError as exc:
        log.warning("could not read the alert journal %s: %s", path, exc)
        return []
    return [ev.Alert(severity=str(r.get("severity", "INFO")), message=str(r.get("message", "")),
                     source=str(r.get("source") or "journal"), time=float(r["time"])) for r in records]
