"""`redline run --detach`'s background process: an engine that serves its socket until told to stop.

`console.cli` starts this module as its own process in a new session, with
stdout and stderr going to `<run_dir>/engine.log`. It runs the experiment
like `redline run --headless` (every event is written to the log as a JSON
line, health at the console's pace, so `redline replay engine.log` shows the
run), but stays up after the experiment ends, serving consoles, until
`redline stop`, SIGTERM or SIGINT stops it safely with a final checkpoint.
SIGHUP is ignored: it has no terminal. The log is kept to a bounded size
(engine/runtime/log_rotation.py).
A stop that does not finish within --shutdown-timeout (an experiment stuck in
a call that cannot be interrupted) ends the process with exit code 5, after
telling the attached consoles that the final checkpoint was not written.
"""

from __future__ import annotations

import os
import signal
import sys

from engine.commands import Shutdown
from engine.paths import resolve_run_dir
from engine.runtime.engine import Engine
from engine.runtime.headless import (EXIT_BAD_INPUT, EXIT_OK, LOG_EVERY, _print, _Signals, build_parser,
                                     config_from_args)
from engine.runtime.log_rotation import LogRotation, max_bytes_from_environment
from engine.runtime.socket_paths import LOG_NAME

EXIT_FAILED = 1
EXIT_NO_FINAL_CHECKPOINT = 5
SERVE_DELAY_VARIABLE = "REDLINE_TEST_SERVE_DELAY"  # tests: seconds to wait before serving (a slow start, on demand)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        print(f"--max-steps must be at least 1, got {args.max_steps}", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        log_max = max_bytes_from_environment()
    except ValueError as exc:
        print(f"redline: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    signals = _Signals()
    signals.install()  # before the engine starts: a SIGTERM from then on is a safe stop, never a kill
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    engine = Engine(config_from_args(args))
    if delay := float(os.environ.get(SERVE_DELAY_VARIABLE) or 0):
        print(f"redline: {SERVE_DELAY_VARIABLE}: waiting {delay:g} s before serving", file=sys.stderr, flush=True)
        signals.wake.wait(delay)
    if signals.received is not None:
        print("redline: stopped before the engine started; nothing was loaded", file=sys.stderr, flush=True)
        return EXIT_OK
    try:
        engine.start()
    except OSError as exc:
        print(f"redline: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    log = LogRotation(resolve_run_dir(engine.config.run_dir, engine.config.model) / LOG_NAME, log_max)
    while engine.is_alive():
        engine.wait_events(timeout=0.5)
        _print(engine.drain_events(), sys.stdout)
        log.check()
        signals.wake.wait(LOG_EVERY)  # events gather meanwhile; a signal ends the pause at once
        if signals.received is not None and not engine._shutdown_requested:
            engine.submit(Shutdown())
        if engine._shutdown_requested:  # by a signal, `redline stop`, a console's q then y, or --on-detach stop
            result = engine.shutdown()  # waits at most --shutdown-timeout
            _print(engine.drain_events(), sys.stdout)
            if engine.is_alive():  # stuck: tell the consoles why, then end the process (and the stuck thread)
                print(f"redline: the final checkpoint was NOT written: {result.reason}", file=sys.stderr, flush=True)
                if engine.server is not None:
                    engine.server.stop(reason=f"the final checkpoint was NOT written: {result.reason}")
                return EXIT_NO_FINAL_CHECKPOINT
    _print(engine.drain_events(), sys.stdout)
    return EXIT_FAILED if engine.error else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
