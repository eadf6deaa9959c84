"""`redline run --detach`'s background process: an engine that serves its socket until told to stop.

`console.cli` starts this module as its own process in a new session, with
stdout and stderr going to `<run_dir>/engine.log`. It runs the experiment
like `redline run --headless` (every event is written to the log as a JSON
line, so `redline replay engine.log` shows the run), but stays up after the
experiment ends, serving consoles, until `redline stop`, SIGTERM or SIGINT
stops it safely with a final checkpoint. SIGHUP is ignored: it has no terminal.
"""

from __future__ import annotations

import signal
import sys

from engine.commands import Shutdown
from engine.runtime.engine import Engine
from engine.runtime.headless import EXIT_BAD_INPUT, EXIT_OK, _print, _Signals, build_parser, config_from_args

EXIT_FAILED = 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_steps is not None and args.max_steps < 1:
        print(f"--max-steps must be at least 1, got {args.max_steps}", file=sys.stderr)
        return EXIT_BAD_INPUT
    engine = Engine(config_from_args(args))
    try:
        engine.start()
    except OSError as exc:
        print(f"redline: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    signals = _Signals()
    signals.install()
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    stopping = False
    while engine.is_alive():
        engine.wait_events(timeout=0.5)
        _print(engine.drain_events(), sys.stdout)
        if signals.received is not None and not stopping:
            stopping = True
            engine.submit(Shutdown())
    _print(engine.drain_events(), sys.stdout)
    return EXIT_FAILED if engine.error else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
