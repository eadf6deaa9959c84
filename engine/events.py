"""Events: what the engine tells its clients, as small immutable records.

The engine thread publishes these; the console (or `redline run --headless`)
drains them. They are plain data with no torch inside, so a client can be tested
by feeding it events, and every event serialises to one JSON line.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from engine.policy import SEVERITIES  # noqa: F401  (re-exported: clients filter alerts by it)


class EngineState(str, enum.Enum):
    """Lifecycle of the engine thread."""

    STARTING = "starting"  # thread up, model not loaded yet
    LOADING = "loading"  # loading or building the model
    IDLE = "idle"  # model loaded, no experiment running
    RUNNING = "running"  # an experiment is running
    PAUSED = "paused"  # experiment held at a step() boundary
    STOPPING = "stopping"  # emergency stop in progress
    RECOVERING = "recovering"  # an emergency procedure (rollback, reload) is running
    ERROR = "error"  # the engine itself failed; see the CRITICAL alert
    STOPPED = "stopped"  # thread has exited




def _now() -> float:
    return time.time()


@dataclass(frozen=True, slots=True)
class Event:
    """Base of every event; `kind` names the event type in JSON output."""

    kind: ClassVar[str] = "event"

    def to_dict(self) -> dict[str, Any]:
        data = {"event": self.kind}
        for name in _field_names(type(self)):
            data[name] = _plain(getattr(self, name))
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, default=str)


_PLAIN_TYPES = frozenset((str, int, float, bool, type(None)))
_FIELD_NAMES: dict[type, tuple[str, ...] | None] = {}  # per class: its dataclass fields, None if not a dataclass


def _field_names(cls: type) -> tuple[str, ...] | None:
    """The field names of dataclass `cls` (looked up once per class: events are encoded on every step)."""
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        names = tuple(f.name for f in dataclasses.fields(cls)) if dataclasses.is_dataclass(cls) else None
        _FIELD_NAMES[cls] = names
        return names


def _plain(value: Any) -> Any:
    if type(value) in _PLAIN_TYPES:
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    names = None if isinstance(value, type) else _field_names(type(value))
    if names is not None:
        return {name: _plain(getattr(value, name)) for name in names}
    return value


@dataclass(frozen=True, slots=True)
class EngineStateChanged(Event):
    kind: ClassVar[str] = "state"
    state: EngineState
    detail: str = ""
    model: str = ""
    device: str = ""
    dtype: str = ""
    experiment: str | None = None
    step: int = 0
    step_name: str = ""
    started_at: float = 0.0  # engine start, for the uptime clock
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class Gauge:
    """One console gauge as the engine judged it (not an event by itself); built in engine.gauges."""

    name: str  # stable id, e.g. "max_abs"
    label: str  # shown left of the value, e.g. "max|w|"
    text: str  # the value as shown, e.g. "1.23"
    severity: str = "INFO"  # what the engine's policy says of the value
    value: float | None = None  # plotted in the gauge's history; None: nothing to plot
    note: str = ""  # shown after the value in the severity's colour, e.g. "(+12% vs 6.75)"


@dataclass(frozen=True, slots=True)
class HealthSnapshot(Event):
    """One fused health scan. Latest wins: a slow client only sees the newest."""

    kind: ClassVar[str] = "health"
    status: str  # OK | WARNING | CRITICAL
    nan_count: int = 0
    inf_count: int = 0
    max_abs_weight: float = 0.0
    grad_norm: float | None = None  # None when no parameter has a gradient
    perplexity: float | None = None  # None until measured
    baseline_perplexity: float | None = None
    device_memory_used: int | None = None  # bytes; None on CPU-only runs
    device_memory_total: int | None = None
    host_memory_used: int = 0  # bytes, this process (RSS)
    host_memory_total: int = 0  # bytes, the machine
    issues: int = 0
    scan_ms: float = 0.0
    step: int = 0
    gauges: tuple[Gauge, ...] = ()  # what the console shows, in order, each with its severity
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class Alert(Event):
    """An alert. Never dropped: every alert reaches every client."""

    kind: ClassVar[str] = "alert"
    severity: str  # one of SEVERITIES
    message: str
    source: str = "engine"
    rule: str = ""  # the engine.policy rule that fired ("" for the engine's own reports)
    action: str = ""  # what the policy made the engine do: alert | pause | rollback | stop ("" for reports)
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CheckpointInfo:
    """One checkpoint as the console lists it (not an event by itself)."""

    id: str
    created: float  # epoch seconds
    purpose: str = ""
    state: str = ""  # metadata "state": baseline | modified | forensic | auto ...
    size_bytes: int = 0  # bytes this checkpoint references
    verified: bool | None = None  # None: not verified in this session
    health: str = ""  # health status when it was saved (OK/WARNING/CRITICAL), "" unknown
    tags: tuple[str, ...] = ()
    metadata_json: str = "{}"  # the full metadata, JSON text, shown literally


@dataclass(frozen=True, slots=True)
class CheckpointList(Event):
    """The full, current list (oldest first). Sent at start and on any change."""

    kind: ClassVar[str] = "checkpoints"
    checkpoints: tuple[CheckpointInfo, ...] = ()
    disk_usage: int = 0
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CheckpointSaved(Event):
    kind: ClassVar[str] = "checkpoint_saved"
    checkpoint: CheckpointInfo
    origin: str = "engine"  # "engine" | "external" (another process)
    seconds: float = 0.0
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CheckpointRestored(Event):
    kind: ClassVar[str] = "checkpoint_restored"
    checkpoint_id: str
    ok: bool
    message: str = ""
    seconds: float = 0.0
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CheckpointDeleted(Event):
    kind: ClassVar[str] = "checkpoint_deleted"
    checkpoint_id: str
    origin: str = "engine"
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class TensorChange:
    layer: str
    change: float  # magnitude (L2 norm of the difference)
    relative: float = 0.0  # change / norm of the first tensor
    severity: str = "LOW"  # engine.policy.change_severity of the change


@dataclass(frozen=True, slots=True)
class ComparisonReady(Event):
    """Answer to a Compare command: the most-changed tensors, largest first."""

    kind: ClassVar[str] = "comparison"
    checkpoint_a: str
    checkpoint_b: str  # a checkpoint id, or "current" for the live model
    num_differences: int = 0
    differences: tuple[TensorChange, ...] = ()
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CouplingView(Event):
    """Tied-weight groups and coupled modifications recorded so far."""

    kind: ClassVar[str] = "coupling"
    groups: tuple[tuple[str, ...], ...] = ()
    storages: tuple[str, ...] = ()  # one description per group: "0x7f.. 1.2 MiB float32"
    coupled_modifications: int = 0
    recent: tuple[str, ...] = ()  # newest coupled-modification descriptions
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class Progress(Event):
    """Progress of long work (model load, training the demo model, restore)."""

    kind: ClassVar[str] = "progress"
    task: str
    done: float
    total: float | None = None  # None: indeterminate
    message: str = ""
    finished: bool = False
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class ExperimentStep(Event):
    kind: ClassVar[str] = "step"
    experiment: str
    step: int
    name: str = ""
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class RunOutcome(Event):
    """How an experiment run ended: one of engine.runtime.outcomes (headless maps it to an exit code)."""

    kind: ClassVar[str] = "outcome"
    outcome: str
    experiment: str | None = None
    steps: int = 0
    detail: str = ""
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class LogLine(Event):
    kind: ClassVar[str] = "log"
    text: str
    source: str = "experiment"
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class CommandDone(Event):
    """Acknowledges a command by the id `Engine.submit` returned."""

    kind: ClassVar[str] = "command_done"
    command_id: int
    command: str  # the command's kind, e.g. "save"
    ok: bool
    message: str = ""
    result: str = ""  # e.g. the checkpoint id a save produced
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class RollbackMemory(Event):
    """Whether fast rollback holds the model's state in host memory, decided at load (--rollback-memory)."""

    kind: ClassVar[str] = "rollback_memory"
    on: bool
    model_bytes: int
    budget_bytes: int = -1  # -1: off by the option
    message: str = ""  # "fast rollback: on, 14.2 GiB pinned (...)" or why it is off
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class EditTensorInfo:
    """One tensor an edit touched, as the Edits screen lists it (not an event by itself)."""

    name: str
    delta_norm: float | None = None  # ||W_after - W_before||; None for a rolled-back edit's unmeasured tensor
    relative: float | None = None  # delta_norm / ||W_before||


@dataclass(frozen=True, slots=True)
class EditInfo:
    """One entry of the edit journal (engine.edits): an edit or a revert (not an event by itself)."""

    id: int
    entry: str  # "edit" | "revert"
    description: str
    outcome: str  # "committed" | "rejected" | "failed"
    created: float  # epoch seconds
    tensors: tuple[EditTensorInfo, ...] = ()
    reasons: tuple[str, ...] = ()  # why the gate rejected it (or what failed)
    gate: str = ""  # what the gate checked, one line
    reverts: int | None = None  # a revert entry: the edit it undid
    reverted_by: int | None = None  # an edit: the revert entry that undid it
    checkpoint: str = ""  # the checkpoint the policy asked for at commit ("" none)


@dataclass(frozen=True, slots=True)
class EditRecorded(Event):
    """A journal entry was written (or, at start, an earlier one is replayed); a revert also marks its edit."""

    kind: ClassVar[str] = "edit"
    edit: EditInfo
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class RevertPlanned(Event):
    """Answer to a PlanRevert command: what reverting one edit would change."""

    kind: ClassVar[str] = "revert_plan"
    edit_id: int
    edits: tuple[int, ...] = ()  # what a revert undoes, newest first, the edit itself last
    tensors: tuple[str, ...] = ()  # every tensor those edits touched
    later: tuple[int, ...] = ()  # later edits that touched the same tensors: reverted too (cascade)
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class PolicySetting:
    """One value of the active policy (not an event by itself): a threshold, a rule's parameter or action."""

    name: str  # "max_weight_value", "baseline_departure.high", "spike.actions.CRITICAL", "spike.enabled"
    value: str  # as shown, e.g. "100", "rollback", "on"
    origin: str = "default"  # "default", or the policy file that set it
    meaning: str = ""


@dataclass(frozen=True, slots=True)
class PolicyRule:
    """One rule of the active policy as the policy screen lists it (not an event by itself)."""

    rule: str
    enabled: bool
    params: str  # "high=10, critical=100"
    actions: str  # "CRITICAL->rollback"
    meaning: str = ""
    origin: str = "default"  # "default", or the policy file(s) that changed this rule


@dataclass(frozen=True, slots=True)
class PolicyInfo(Event):
    """The engine's active policy: every rule, every threshold, and where each value came from.

    Sent when the engine has loaded its policy; a console only shows it.
    """

    kind: ClassVar[str] = "policy"
    rules: tuple[PolicyRule, ...] = ()
    settings: tuple[PolicySetting, ...] = ()  # the thresholds, then each rule's parameters and actions
    sources: tuple[str, ...] = ()  # "run-dir policy.toml: PATH", "--policy: PATH", in the order applied
    time: float = field(default_factory=_now)


@dataclass(frozen=True, slots=True)
class LayerDrift:
    """One layer's drift from the baseline (not an event by itself)."""

    layer: str  # e.g. "model.layers.3", "model.embed_tokens", "lm_head"
    relative: float  # the largest ||W - W0|| / ||W0|| among the layer's tensors
    tensor: str = ""  # the tensor with that change ("" when none changed)
    tied: bool = False  # the layer holds a tensor that shares storage with another layer's
    severity: str = "INFO"  # engine.policy.change_severity of `relative` (INFO: unchanged)


@dataclass(frozen=True, slots=True)
class DriftMap(Event):
    """Per-layer drift of the live model from the baseline checkpoint, in the model's layer order.

    Latest wins: a slow client only needs the newest.
    """

    kind: ClassVar[str] = "drift"
    baseline: str  # the baseline checkpoint's id
    layers: tuple[LayerDrift, ...] = ()
    step: int = 0
    compute_ms: float = 0.0  # what this update cost the engine thread
    recomputed: int = 0  # tensors recomputed for this update (the others had not changed)
    time: float = field(default_factory=_now)
