"""Driving a real Engine from tests: a tiny model on disk, experiment files, waiting for events.

Waits poll the engine's event stream with a generous deadline; they never
assert how fast something happened, only that it happened.
"""

from __future__ import annotations

import textwrap
import time
from pathlib import Path
from typing import Callable

from engine.commands import Command
from engine.events import CommandDone, EngineState, EngineStateChanged, Event
from engine.runtime import Engine, EngineConfig

DEADLINE = 60.0  # seconds; generous for a loaded 2-core machine

# An experiment that keeps changing one weight, a step at a time, until stopped.
KEEP_CHANGING = """
    import torch

    def run(ctx):
        weight = ctx.model.model.layers[1].mlp.up_proj.weight
        while True:
            with torch.no_grad():
                weight.mul_(1.001)
            ctx.step("scale up_proj")
            ctx.wait(0.02)
"""


def save_tiny_model(directory: Path, seed: int = 0) -> Path:
    """A tied tiny Qwen2 + the byte tokenizer, saved with save_pretrained (safetensors)."""
    from engine.tokenizer import byte_tokenizer
    from tests.conftest import make_tiny_qwen2

    directory.mkdir(parents=True, exist_ok=True)
    make_tiny_qwen2(seed=seed).save_pretrained(directory)
    byte_tokenizer().save_pretrained(directory)
    return directory


def write_experiment(directory: Path, body: str, name: str = "experiment.py") -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(body))
    return path


class EngineDriver:
    """A started Engine plus everything it published, with waits on events."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.events: list[Event] = []

    @property
    def core(self):
        return self.engine.core

    def pump(self) -> None:
        self.events.extend(self.engine.drain_events())

    def wait_for(self, predicate: Callable[[Event], bool], timeout: float = DEADLINE, since: int = 0) -> Event:
        """The first event (from index `since`) matching `predicate`; fails after `timeout`."""
        deadline = time.monotonic() + timeout
        checked = since
        while True:
            self.pump()
            for event in self.events[checked:]:
                if predicate(event):
                    return event
            checked = max(checked, len(self.events))
            if time.monotonic() > deadline:
                kinds = [getattr(e, "kind", "?") for e in self.events[-30:]]
                raise AssertionError(f"no matching event within {timeout} s; last events: {kinds}; "
                                     f"alerts: {self.alert_messages()[-10:]}")
            self.engine.wait_events(timeout=0.1)

    def wait_state(self, state: EngineState, since: int = 0, timeout: float = DEADLINE) -> EngineStateChanged:
        return self.wait_for(lambda e: isinstance(e, EngineStateChanged) and e.state == state, timeout, since)

    def wait_until(self, condition: Callable[[], bool], timeout: float = DEADLINE) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise AssertionError(f"condition not met within {timeout} s; alerts: {self.alert_messages()[-10:]}")
            self.engine.wait_events(timeout=0.05)
            self.pump()

    def command(self, command: Command, timeout: float = DEADLINE) -> CommandDone:
        """Submit and wait for its CommandDone."""
        command_id = self.engine.submit(command)
        return self.wait_for(lambda e: isinstance(e, CommandDone) and e.command_id == command_id, timeout)

    def wait_outcome(self, timeout: float = DEADLINE) -> str:
        """Wait until the experiment run has ended and the engine is idle again; return the outcome."""
        core = self.engine.core
        self.wait_until(lambda: self.engine.outcome is not None and self.engine.state == EngineState.IDLE
                        and (core is None or core.pending is None), timeout)
        return self.engine.outcome

    def of(self, cls: type) -> list:
        self.pump()
        return [e for e in self.events if isinstance(e, cls)]

    def alert_messages(self, severity: str | None = None) -> list[str]:
        from engine.events import Alert

        return [f"{e.severity}: {e.message}" for e in self.events
                if isinstance(e, Alert) and (severity is None or e.severity == severity)]


def start_engine(model_dir: Path, run_dir: Path, experiment: str | Path | None = None, **overrides) -> EngineDriver:
    """Start an engine on `model_dir` and wait until it is ready (IDLE, baseline saved)."""
    settings = dict(health_interval=0.2, stop_grace=1.0, evaluate_every=0, auto_checkpoint_every=0)
    settings.update(overrides)
    config = EngineConfig(model=str(model_dir), experiment=str(experiment) if experiment else None,
                          run_dir=run_dir, device="cpu", **settings)
    engine = Engine(config)
    engine.start()
    driver = EngineDriver(engine)
    driver.wait_for(lambda e: isinstance(e, EngineStateChanged) and e.state in (EngineState.IDLE, EngineState.ERROR))
    return driver


# -- fixtures (import them into a test module to use them) ------------------------------
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny-qwen2"))


@pytest.fixture
def engines():
    """Start engines with `engines(model_dir, run_dir, ...)`; all are shut down after the test."""
    started: list[EngineDriver] = []

    def start(*args, **kwargs) -> EngineDriver:
        driver = start_engine(*args, **kwargs)
        started.append(driver)
        return driver

    yield start
    for driver in started:
        driver.engine.shutdown(timeout=60)
        assert not driver.engine.is_alive(), "engine thread did not end"
