"""Supervise your own training script: the engine inside your process, around the model you built.

    from engine.supervise import supervise, Stopped

    with supervise(model, tokenizer) as ctx:
        for batch in data:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            ctx.step("train", loss=loss)

Entering the block takes the baseline checkpoint and serves `<run_dir>/engine.sock`
(`redline ps` lists the script, `redline attach` opens a console on it).
`ctx.step()` is the health check (the policy's rules, as for an engine-run
experiment), the automatic checkpoint, the pause point and the point where
consoles' commands (save, restore, compare...) run, in your thread. An
emergency stop, an automatic rollback or `redline stop` restores the model
(or saves it) and raises `Stopped` out of `ctx.step()` or out of the forward
pass. Leaving the block saves the final checkpoint and stops serving; an
exception leaving it is recorded (the model rolled back, as for an
experiment that raises) and re-raised.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import TracebackType
from typing import Any

from engine.runtime.engine import EngineConfig
from engine.runtime.supervised_run import SupervisedContext, SupervisedRun
from engine.runtime.supervised_stops import EmergencyStopped, RolledBack, ShutdownRequested, Stopped

__all__ = ["supervise", "Supervision", "SupervisedContext", "Stopped", "EmergencyStopped", "RolledBack",
           "ShutdownRequested"]

OPTIONS = {  # supervise() option -> EngineConfig field
    "policy_file": "policy_file",
    "forensic_checkpoints": "forensic_checkpoints",
    "auto_checkpoint_every": "auto_checkpoint_every",
    "evaluate_every": "evaluate_every",
    "health_interval": "health_interval",
    "stop_grace": "stop_grace",
    "serve": "serve",
}
NOT_OPTIONS = {
    "model": "the model is the one you pass",
    "experiment": "your script is the experiment",
    "device": "the model stays on the device you put it on",
    "dtype": "the model keeps its dtype",
    "readonly": "a supervised script changes its model; attach a console with --readonly to only watch",
    "threads": "your script sets torch's threads",
    "tokenizer": "pass the tokenizer object as the second argument",
}


class Supervision:
    """What `supervise()` returns: a context manager whose `__enter__` gives the script's ctx."""

    def __init__(self, model: Any, tokenizer: Any, run_dir: str | Path | None, name: str, options: dict):
        import torch

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"supervise() takes the torch.nn.Module you train, got {type(model).__name__}")
        for key in options:
            if key in NOT_OPTIONS:
                raise TypeError(f"supervise() has no option {key!r}: {NOT_OPTIONS[key]}")
            if key not in OPTIONS:
                raise TypeError(f"supervise() has no option {key!r}; the options are: {', '.join(OPTIONS)}, name")
        self.name = name
        fields = {"serve": True, **{OPTIONS[key]: value for key, value in options.items()}}
        self.config = EngineConfig(model=model_label(model), experiment=None, run_dir=run_dir_for(run_dir, name),
                                   supervised=name, **fields)
        from engine.runtime.supervised_core import SupervisedEngine

        self.engine = SupervisedEngine(self.config, model, tokenizer)
        self.run: SupervisedRun | None = None

    def __enter__(self) -> SupervisedContext:
        if self.run is not None:
            raise RuntimeError("this supervise(...) was already entered; call supervise() again for a new run")
        self.run = SupervisedRun(self.engine, self.name)
        return self.run.open()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        instead = self.run.finish(exc)
        if instead is not None:
            raise instead from None
        return False

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_dir)


def supervise(model: Any, tokenizer: Any = None, run_dir: str | Path | None = None, *, name: str | None = None,
              **options: Any) -> Supervision:
    """Supervise `model` while the `with` block runs; see the module docstring.

    `run_dir`: where checkpoints, alerts and the socket live (default: a run
    directory named after the script). `name`: how `redline ps` and the
    console call the run (default: the calling file's name). Options, as for
    the engine: `policy_file`, `forensic_checkpoints`, `auto_checkpoint_every`,
    `evaluate_every` (perplexity, with a tokenizer), `health_interval`,
    `stop_grace` (seconds before a stop is raised asynchronously in a script
    that calls neither step() nor the model), `serve` (False: no socket).
    """
    if name is None:
        name = caller_name(sys._getframe(1).f_code.co_filename)
    return Supervision(model, tokenizer, run_dir, name, options)


def caller_name(filename: str) -> str:
    """The calling script's file name ("script" for code without a file)."""
    return Path(filename).name if filename and not filename.startswith("<") else "script"


def model_label(model: Any) -> str:
    """How the engine names a given model: its transformers name_or_path, else its class."""
    name = str(getattr(getattr(model, "config", None), "name_or_path", "") or "")
    return name or type(model).__name__


def run_dir_for(run_dir: str | Path | None, name: str) -> Path:
    """The run directory given, else one named after the script in Redline's data directory."""
    from engine.paths import default_run_dir

    return Path(run_dir).expanduser().absolute() if run_dir else default_run_dir(f"supervised-{Path(name).stem}")
