"""`redline run --headless`: run an experiment without the console, events as JSON lines.

The engine serves `<run_dir>/engine.sock` meanwhile, so `redline attach` can
watch a headless run. Every engine event is printed to stdout as one JSON object per line (flushed),
so the run can be followed live, piped into tools, or replayed later with
`redline replay FILE.jsonl`. Lines go out every `LOG_EVERY` seconds; health
snapshots between two writes coalesce to the newest (the console's pace), so a
fast experiment is not slowed by a log line and a thread wake-up per event.
The process exits when the experiment ends.

Exit codes:
  0  the experiment finished, or was stopped cleanly by SIGINT/SIGTERM/SIGHUP
     (the experiment is stopped, a final checkpoint saved, then exit)
  1  the experiment was stopped by an automatic rollback or raised an
     exception; the model was recovered (the alerts say what happened)
  2  bad input: the model or the experiment file could not be used
  3  an unrecovered CRITICAL problem: a rollback failed or the model was left unhealthy
  4  the engine itself failed
  5  the final checkpoint was due and not written (the save failed, or the engine did
     not stop within --shutdown-timeout); the last line on stderr says why
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from typing import TextIO

from engine.commands import Shutdown
from engine.events import EngineState
from engine.policy_file import PolicyError, load_policy_file
from engine.rollback_memory import HELP as ROLLBACK_MEMORY_HELP, rollback_memory_argument
from engine.runtime.engine import Engine, EngineConfig
from engine.runtime.shutdown_result import EXIT_NO_FINAL_CHECKPOINT
from engine.runtime.outcomes import (
    OUTCOME_FAILED,
    OUTCOME_FINISHED,
    OUTCOME_LOAD_ERROR,
    OUTCOME_MODEL_ERROR,
    OUTCOME_POLICY_ERROR,
    OUTCOME_ROLLED_BACK,
    OUTCOME_STOPPED,
    OUTCOME_UNRECOVERED,
)

LOG_EVERY = 0.1  # seconds between two writes of the event log (health meanwhile: the newest only)

EXIT_OK = 0
EXIT_RECOVERED = 1
EXIT_BAD_INPUT = 2
EXIT_UNRECOVERED = 3
EXIT_ENGINE_FAILURE = 4

_OUTCOME_EXIT = {
    OUTCOME_FINISHED: EXIT_OK,
    OUTCOME_STOPPED: EXIT_OK,
    OUTCOME_ROLLED_BACK: EXIT_RECOVERED,
    OUTCOME_FAILED: EXIT_RECOVERED,
    OUTCOME_LOAD_ERROR: EXIT_BAD_INPUT,
    OUTCOME_MODEL_ERROR: EXIT_BAD_INPUT,
    OUTCOME_POLICY_ERROR: EXIT_BAD_INPUT,
    OUTCOME_UNRECOVERED: EXIT_UNRECOVERED,
}

_BAD_INPUT = (OUTCOME_MODEL_ERROR, OUTCOME_POLICY_ERROR)  # the engine stopped before any experiment ran

EPILOG = """exit codes:
  0  finished, or stopped cleanly by SIGINT/SIGTERM/SIGHUP (stop, final checkpoint, exit)
  1  stopped by an automatic rollback or an exception in the experiment; model recovered
  2  bad input (model, experiment or policy file unusable)
  3  unrecovered CRITICAL (rollback failed / model left unhealthy)
  4  engine failure
  5  the final checkpoint was not written (save failed, or no stop within --shutdown-timeout);
     the last line on stderr says why
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redline run --headless",
        description="Run an experiment under Redline's safety engine without the console; "
        "print every event as a JSON line on stdout.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--headless", action="store_true", help="accepted for `redline run --headless` (always headless)")
    parser.add_argument("--detach", action="store_true",
                        help="`redline run --detach`: start the engine as a background process that keeps serving "
                             "<run_dir>/engine.sock after the experiment, until `redline stop`; prints its run "
                             "directory and pid once the socket answers (attach with `redline attach`)")
    parser.add_argument("--experiment", default="demo", metavar="FILE|demo",
                        help="a .py file defining run(ctx), or 'demo' (default)")
    parser.add_argument("--model", default="demo", metavar="PATH|demo",
                        help="a local Hugging Face directory, a hub id in the local cache, or 'demo' (default)")
    parser.add_argument("--run-dir", default=None, metavar="DIR",
                        help="where checkpoints, memory and the alert journal go (default: per model, in the data dir)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ..., or auto: spread over every visible GPU (default: cuda if available)")
    parser.add_argument("--dtype", default=None, help="float32, bfloat16, float16 ... (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--max-steps", type=int, default=None, metavar="N", help="stop the experiment after N steps")
    parser.add_argument("--tokenizer", default=None, metavar="PATH",
                        help="load the tokenizer from this directory instead of the model's (without any "
                             "tokenizer the model is still supervised, with perplexity off)")
    parser.add_argument("--policy", default=None, metavar="FILE",
                        help="a TOML policy file: thresholds, rule parameters and actions over the defaults "
                             "(and over policy.toml in the run directory)")
    parser.add_argument("--rollback-memory", default="auto", metavar="SIZE|auto|off", type=rollback_memory_argument,
                        help=ROLLBACK_MEMORY_HELP)
    parser.add_argument("--no-forensic", action="store_true",
                        help="do not keep the state before a rollback as a forensic checkpoint")
    parser.add_argument("--shutdown-timeout", type=float, default=EngineConfig.shutdown_timeout, metavar="S",
                        help="seconds to wait for the experiment to stop and the final checkpoint to be "
                             f"written before giving up with exit code 5 (default {EngineConfig.shutdown_timeout:g})")
    parser.add_argument("--on-detach", choices=("continue", "pause", "stop"), default="continue",
                        help="what the engine does when its last attached console leaves: continue (default), "
                             "pause the experiment at its next step until a console attaches, or stop safely "
                             "with a final checkpoint")
    return parser


class _Signals:
    """SIGINT/SIGTERM/SIGHUP -> a flag the main loop acts on (install only in the main thread)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.wake = threading.Event()
        self._previous: dict[int, object] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None)):
            if signum is not None:
                self._previous[signum] = signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: object) -> None:
        self.received = signum
        self.wake.set()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)


def _print(events: list, out: TextIO) -> bool:
    """Write events as JSON lines; False if stdout is gone."""
    try:
        for event in events:
            out.write(event.to_json() + "\n")
        out.flush()
        return True
    except (BrokenPipeError, OSError):
        return False


def config_from_args(args: argparse.Namespace) -> EngineConfig:
    """The engine configuration `redline run` options describe; the engine serves its socket."""
    options = {}
    if args.max_steps is not None:
        options["max_steps"] = args.max_steps
    return EngineConfig(
        model=args.model,
        experiment=None if args.experiment in ("none", "") else args.experiment,
        run_dir=args.run_dir,
        device=args.device,
        dtype=args.dtype,
        forensic_checkpoints=not args.no_forensic,
        experiment_options=options,
        tokenizer=args.tokenizer,
        policy_file=args.policy,
        serve=True,
        shutdown_timeout=args.shutdown_timeout,
        on_detach=args.on_detach,
        rollback_memory=args.rollback_memory,
    )


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    if args.max_steps is not None and args.max_steps < 1:
        print(f"--max-steps must be at least 1, got {args.max_steps}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.policy is not None:
        try:
            load_policy_file(args.policy)
        except PolicyError as exc:
            print(f"--policy: {exc}", file=sys.stderr)
            return EXIT_BAD_INPUT
    config = config_from_args(args)
    engine = Engine(config)
    try:
        engine.start()
    except OSError as exc:  # the socket cannot be served, e.g. another engine serves this run directory
        print(f"redline: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    signals = _Signals()
    signals.install()
    code: int | None = None
    shutting_down = False
    deadline = 0.0
    stdout_ok = True
    try:
        while engine.is_alive():
            engine.wait_events(timeout=0.2)
            if stdout_ok:
                stdout_ok = _print(engine.drain_events(), out)
            signals.wake.wait(LOG_EVERY)  # a signal ends the pause at once
            if shutting_down:
                if time.monotonic() >= deadline:
                    break
                continue
            if signals.received is not None or not stdout_ok:
                code = EXIT_OK
            elif engine.state == EngineState.ERROR:
                code = EXIT_BAD_INPUT if engine.outcome in _BAD_INPUT else EXIT_ENGINE_FAILURE
            elif engine.state == EngineState.IDLE and not _restart_pending(engine):
                if engine.outcome is not None:
                    code = _OUTCOME_EXIT.get(engine.outcome, EXIT_OK)
                elif config.experiment is None:
                    code = EXIT_OK
            if code is not None:
                shutting_down = True
                deadline = time.monotonic() + max(0.0, args.shutdown_timeout)
                engine.submit(Shutdown(checkpoint=code in (EXIT_OK, EXIT_RECOVERED)))
        result = engine.shutdown(timeout=0)
        if stdout_ok:
            _print(engine.drain_events(), out)
    finally:
        signals.restore()
    if code is None:  # the thread ended on its own
        code = EXIT_ENGINE_FAILURE if engine.error and engine.outcome not in _BAD_INPUT else EXIT_BAD_INPUT
    if not result.ok:
        if code in (EXIT_OK, EXIT_RECOVERED):
            code = EXIT_NO_FINAL_CHECKPOINT
        _last_line(f"redline: {result.describe()}")
    return code


def _last_line(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except OSError:
        pass


def _restart_pending(engine: Engine) -> bool:
    core = engine.core
    return core is not None and core.pending is not None


if __name__ == "__main__":
    sys.exit(main())
