"""The engine around a model a script built itself, running in that script's thread (engine.supervise).

`SupervisedEngine` is the `Engine` facade without an engine thread: its
thread is the script's own, so `start()` sets the engine up in the calling
thread (the socket server, the safety systems, the baseline checkpoint) and
`close()` tears it down there. `SupervisedCore` is the `EngineCore` whose
model manager is `GivenModel`: the script's model as it is, on its own
device, with no files to reload it from.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any

import torch

from engine.events import EngineState
from engine.runtime.core import EngineCore
from engine.runtime.engine import Engine, EngineConfig
from engine.runtime.shutdown_result import ShutdownResult
from engine.runtime.stop import StopSupervisor


class SupervisedStartError(RuntimeError):
    """The supervised engine could not start (the policy file, the run directory); the message says why."""


class GivenModel:
    """Stands where the engine's ModelManager stands: the script's model, nothing to load or reload."""

    def __init__(self, model: Any, tokenizer: Any = None):
        first = next(iter(model.parameters()), None)
        self.model = model
        self.tokenizer = tokenizer
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        self.error: str | None = None
        self.tokenizer_note = "" if tokenizer is not None else "supervise() was given no tokenizer."

    def load_model(self) -> bool:
        return True

    def reload(self) -> bool:
        self.error = "the model was built by the supervised script, so there are no files to reload it from"
        return False


class SupervisedCore(EngineCore):
    """The engine core over a given model; its methods run in the script's thread."""

    def __init__(self, engine: "SupervisedEngine", given: GivenModel):
        super().__init__(engine)
        self._given = given

    def open_model_manager(self) -> GivenModel:
        return self._given


class SupervisedEngine(Engine):
    """The Engine facade of a supervised script; see the module docstring. `submit` is thread-safe."""

    def __init__(self, config: EngineConfig, model: Any, tokenizer: Any = None):
        super().__init__(config)
        self._given = GivenModel(model, tokenizer)
        self._open = False

    def is_alive(self) -> bool:
        return self._open

    def start(self) -> None:
        """Set up in the calling thread: socket server, safety systems, baseline checkpoint; raise when unusable."""
        with self._lock:
            if self._thread is not None:
                raise RuntimeError("this supervised engine was already started")
            self._thread = threading.current_thread()
            self.started_at = time.time()
        core = SupervisedCore(self, self._given)
        self.core = core
        core.supervisor = StopSupervisor(self._stop, self.config.stop_grace)
        self._open = True
        try:
            if self.config.serve:
                from engine.paths import resolve_run_dir
                from engine.runtime.server import EngineServer

                server = EngineServer(self, resolve_run_dir(self.config.run_dir, self.config.model))
                server.start()  # raises before anything is bound when another engine serves the run directory
                self.server = server
            core.set_state(EngineState.STARTING)
            if not core.setup():
                raise SupervisedStartError(f"the supervised engine could not start: {self.error}")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Refuse what is still queued, tear the core down (answering a shutdown), stop serving. Idempotent."""
        if not self._open:
            return
        self._open = False
        core = self.core
        while True:
            try:
                item = core.commands.get_nowait()
            except queue.Empty:
                break
            core.handlers.refuse(item, "refused: the supervised script has left its `with supervise(...)` block")
        try:
            core.teardown()
        finally:
            if self.server is not None:
                self.server.stop()

    def shutdown(self, timeout: float | None = None) -> ShutdownResult:
        raise RuntimeError("a supervised engine shuts down when its script leaves the `with supervise(...)` block; "
                           "from elsewhere, submit engine.commands.Shutdown (what `redline stop` does)")
