"""What an experiment sees: `ExperimentContext`, and loading `run(ctx)` from a file.

An experiment is a Python file defining `run(ctx)`. The engine calls it in the
engine thread (the only thread that touches the model). `ctx.step(name)` is the
boundary where the engine answers commands, pauses, scans health, measures
perplexity, auto-checkpoints and stops the experiment when asked to; `ctx.wait`
is an interruptible sleep that does the same upkeep.
"""

from __future__ import annotations

import importlib.util
import inspect
import sys
import traceback
import uuid
from pathlib import Path
from typing import Any, Callable, Protocol

DEMO = "demo"
DEFAULT_BATCH_SIZE = 8


class ExperimentLoadError(Exception):
    """The experiment file cannot be used; the message says where and what to do."""


class ExperimentHost(Protocol):
    """What the engine provides to a context (engine.runtime.experiment_runner.ExperimentRunner)."""

    model: Any
    tokenizer: Any
    checkpoints: Any
    safety: Any
    memory: Any
    inspector: Any
    device: Any
    journal: Any

    def experiment_step(self, ctx: "ExperimentContext", name: str, loss: Any = None,
                        metrics: dict | None = None) -> int: ...
    def experiment_wait(self, ctx: "ExperimentContext", seconds: float) -> None: ...
    def experiment_log(self, ctx: "ExperimentContext", text: str) -> None: ...
    def modification_recorded(self, layer_name: str) -> None: ...


class _ObservedMemory:
    """The MemorySystem as an experiment sees it: modifications are reported to the engine."""

    def __init__(self, memory: Any, host: ExperimentHost):
        self._memory = memory
        self._host = host

    def record_modification(self, layer_name: str, modification_data: Any) -> Any:
        result = self._memory.record_modification(layer_name, modification_data)
        self._host.modification_recorded(layer_name)
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._memory, name)


class ExperimentContext:
    """The experiment's handle on the engine. Lives across automatic restarts of one run."""

    def __init__(self, host: ExperimentHost, name: str, options: dict | None = None):
        self._host = host
        self.name = name
        self.options: dict = dict(options or {})
        self.steps = 0  # step() calls so far, across automatic restarts
        self.restarts = 0  # automatic restarts so far (after a rollback or an out-of-memory retry)
        self.state: dict = {}  # the experiment's own notes, kept across restarts
        requested = int(self.options.get("batch_size", DEFAULT_BATCH_SIZE))
        self._batch_limit: int | None = None
        self._batch_size = max(1, requested)

    @property
    def model(self) -> Any:
        return self._host.model

    @property
    def tokenizer(self) -> Any:
        return self._host.tokenizer

    @property
    def checkpoints(self) -> Any:
        return self._host.checkpoints

    @property
    def safety(self) -> Any:
        return self._host.safety

    @property
    def memory(self) -> Any:
        memory = self._host.memory
        return None if memory is None else _ObservedMemory(memory, self._host)

    @property
    def inspector(self) -> Any:
        return self._host.inspector

    @property
    def device(self) -> Any:
        return self._host.device

    @property
    def journal(self) -> Any:
        """The run's EditJournal (engine.edits): each edit a transaction, revertible one by one."""
        return self._host.journal

    def edit(self, description: str, **options: Any) -> Any:
        """`with ctx.edit("what", layer=3):` is `with ctx.journal.edit("what", layer=3):`."""
        return self.journal.edit(description, **options)

    @property
    def batch_size(self) -> int:
        """The batch the experiment asked for, capped after an out-of-memory recovery."""
        if self._batch_limit is None:
            return self._batch_size
        return min(self._batch_size, self._batch_limit)

    @batch_size.setter
    def batch_size(self, value: int) -> None:
        value = int(value)
        if value < 1:
            raise ValueError(f"batch_size must be at least 1, got {value}")
        self._batch_size = value

    def halve_batch_size(self) -> int:
        """Cap the batch at half its current size (at least 1); returns the new size."""
        self._batch_limit = max(1, self.batch_size // 2)
        return self.batch_size

    def log(self, text: Any) -> None:
        """Send one line to the operator (a LogLine event)."""
        self._host.experiment_log(self, str(text))

    def step(self, name: str = "", loss: Any = None, **metrics: Any) -> int:
        """Mark a step boundary; returns the step number. May raise the stop exception.

        `loss` and `metrics` (numbers or one-element tensors) feed the rolling detection rules:
        spikes, non-finite values and output collapse.
        """
        return self._host.experiment_step(self, str(name), loss, metrics)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds` while the engine keeps answering commands and watching health."""
        self._host.experiment_wait(self, float(seconds))


def load_experiment(path: str | Path | None) -> tuple[str, Callable[[ExperimentContext], Any]]:
    """Return (name, run) for "demo"/None or a .py file defining `run(ctx)`.

    Raises ExperimentLoadError with file:line for syntax errors, errors raised
    while importing the file, and a missing or unusable `run`.
    """
    if path is None or str(path) == DEMO:
        from engine.experiments.demo import run

        return DEMO, run
    file = Path(path).expanduser()
    if not file.exists():
        raise ExperimentLoadError(
            f"Experiment file not found: {file}. Give the path to a Python file that defines run(ctx), or 'demo'."
        )
    if not file.is_file():
        raise ExperimentLoadError(f"Experiment path is not a file: {file}. Give a .py file that defines run(ctx).")
    if file.suffix != ".py":
        raise ExperimentLoadError(f"Experiment file must be a .py file: {file}.")
    module_name = f"redline_experiment_{file.stem}_{uuid.uuid4().hex[:8]}"
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ExperimentLoadError(f"Cannot load {file} as a Python module.")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except SyntaxError as exc:
        sys.modules.pop(module_name, None)
        raise ExperimentLoadError(
            f"{exc.filename or file}:{exc.lineno}: syntax error in the experiment file: {exc.msg}. "
            "Fix the file and run it again."
        ) from None
    except Exception as exc:
        sys.modules.pop(module_name, None)
        where = last_frame_in(exc, file)
        raise ExperimentLoadError(
            f"{where}: the experiment file raised {type(exc).__name__} while loading: {exc}. Fix the file and run it again."
        ) from None
    run = getattr(module, "run", None)
    if not callable(run):
        sys.modules.pop(module_name, None)
        raise ExperimentLoadError(f"{file}: defines no run(ctx) function. Add `def run(ctx): ...` to the file.")
    try:
        inspect.signature(run).bind(object())
    except (TypeError, ValueError):
        line = getattr(getattr(run, "__code__", None), "co_firstlineno", 0)
        raise ExperimentLoadError(
            f"{file}:{line}: run must take exactly one argument (the experiment context): def run(ctx): ..."
        ) from None
    return file.stem, run


def last_frame_in(exc: BaseException, file: Path | None = None) -> str:
    """'path:line (function)' of the innermost traceback frame, preferring frames in `file`."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return str(file) if file else "<unknown>"
    chosen = frames[-1]
    if file is not None:
        resolved = str(Path(file).resolve())
        inside = [f for f in frames if f.filename and str(Path(f.filename).resolve()) == resolved]
        if inside:
            chosen = inside[-1]
    return f"{chosen.filename}:{chosen.lineno} ({chosen.name})"
