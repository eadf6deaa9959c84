"""`redline run --detach`, `redline attach`, `redline ps`, `redline stop`: engines as background servers.

Engines are found through the registry in the user's runtime directory
(engine.runtime.registry); `ps` and `attach` clean up entries and sockets of
engines that died. No torch here: a detached engine is another process
(engine.runtime.detached), reached only through its socket.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from console.engine_client import EngineClient, EngineClientError
from engine.runtime.registry import live_engines, pid_alive
from engine.runtime.socket_paths import LOG_NAME, is_answering, socket_path

START_DEADLINE = 300.0  # seconds for a detached engine's socket to answer (loading a real model can take a while)
STOP_DEADLINE = 600.0  # seconds for a safe stop (the final checkpoint of a large model)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_INTERRUPTED = 130  # Ctrl+C, as a shell reports SIGINT


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"redline: {message}", file=sys.stderr)
    return code


# -- run --detach --------------------------------------------------------------------------------------
class EngineStartError(Exception):
    """The background engine could not be started; the message says why (exit code in `code`)."""

    def __init__(self, message: str, code: int = EXIT_FAILED):
        super().__init__(message)
        self.code = code


def start_engine(argv: list[str], run_dir: Path, progress=None) -> tuple[int, Path]:
    """Start `engine.runtime.detached` with `argv` on `run_dir`, in a new session; its (pid, socket) once it answers.

    The socket answers as soon as the engine thread starts, before the model is loaded:
    a console attached then watches the load. `progress(text)` hears what is being waited for.
    """
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    sock = socket_path(run_dir)
    if is_answering(sock):
        raise EngineStartError(f"an engine already serves {run_dir}; attach to it with `redline attach {run_dir}`",
                               EXIT_USAGE)
    log_path = run_dir / LOG_NAME
    with open(os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab", closefd=True) as log:
        child = subprocess.Popen([sys.executable, "-m", "engine.runtime.detached", *argv], stdin=subprocess.DEVNULL,
                                 stdout=log, stderr=log, start_new_session=True, close_fds=True)
    if progress is not None:
        progress(f"starting the engine (pid {child.pid}, log {log_path})")
    try:
        _wait_until_serving(child, sock, log_path)
    except KeyboardInterrupt:
        raise EngineStartError(_stop_interrupted_start(child, log_path), EXIT_INTERRUPTED) from None
    return child.pid, sock


def _wait_until_serving(child: subprocess.Popen, sock: Path, log_path: Path) -> None:
    deadline = time.monotonic() + START_DEADLINE
    while not is_answering(sock, timeout=1.0):
        if child.poll() is not None:
            tail = log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()[-5:]
            raise EngineStartError(f"the engine exited with code {child.returncode} before serving; from {log_path}:"
                                   "\n  " + "\n  ".join(tail))
        if time.monotonic() > deadline:
            raise EngineStartError(f"the engine (pid {child.pid}) did not answer on {sock} within "
                                   f"{START_DEADLINE:.0f} s; see {log_path}")
        time.sleep(0.05)


def _stop_interrupted_start(child: subprocess.Popen, log_path: Path) -> str:
    """Ctrl+C while waiting: SIGTERM the engine just started (it stops safely, as on `redline stop`); what happened.

    A second Ctrl+C stops only the waiting: the engine then finishes stopping on its own.
    """
    print(f"redline: interrupted; stopping the engine it started (pid {child.pid})…", file=sys.stderr, flush=True)
    try:
        child.terminate()
        code = child.wait(timeout=STOP_DEADLINE)
    except KeyboardInterrupt:
        return f"interrupted again: the engine (pid {child.pid}) is still stopping; check `redline ps`, log {log_path}"
    except subprocess.TimeoutExpired:
        return f"the engine (pid {child.pid}) did not stop within {STOP_DEADLINE:.0f} s; check `redline ps`, log {log_path}"
    how = ("stopped safely" if code == 0 else
           f"ended by {signal.Signals(-code).name} before it had loaded anything" if code < 0 else
           f"stopped with exit code {code}")
    return f"interrupted: the engine it started (pid {child.pid}) {how}; log {log_path}"


def run_detached(argv: list[str]) -> int:
    """Start an engine as its own background process; print its run dir and pid once its socket answers."""
    from engine.paths import resolve_run_dir
    from engine.runtime.headless import build_parser

    args = build_parser().parse_args(argv)
    run_dir = resolve_run_dir(args.run_dir, args.model).absolute()
    rest = [a for a in argv if a != "--detach"]
    if args.run_dir is None:
        rest += ["--run-dir", str(run_dir)]
    try:
        pid, _sock = start_engine(rest, run_dir)
    except EngineStartError as exc:
        return _fail(str(exc), exc.code)
    print(f"run dir: {run_dir}\npid: {pid}\nlog: {run_dir / LOG_NAME}\n"
          f"attach: redline attach {run_dir}\nstop: redline stop {run_dir}", flush=True)
    return EXIT_OK


# -- finding engines -----------------------------------------------------------------------------------
def find_socket(target: str | None) -> tuple[Path | None, str]:
    """The socket of the engine `target` names (run dir or pid; None: the only one), or why there is none."""
    engines = live_engines()
    if target is None:
        if len(engines) == 1:
            return Path(engines[0]["socket"]), ""
        if not engines:
            return None, "no running engine of this user; start one with `redline run --detach`"
        return None, "several engines are running; name one by run directory or pid:\n" + _table(engines)
    if target.isdigit():
        match = [e for e in engines if int(e["pid"]) == int(target)]
        if not match:
            return None, f"no running engine with pid {target} (see `redline ps`)"
        if len(match) > 1:
            return None, f"process {target} runs several engines; name one by run directory"
        return Path(match[0]["socket"]), ""
    path = socket_path(Path(target).expanduser())
    if not is_answering(path):
        return None, f"no engine answers on {path} (see `redline ps`)"
    return path, ""


def describe_engines(engines: list[dict]) -> list[dict]:
    """Each registry entry with what its engine says of itself (state, experiment, step, consoles)."""
    rows = []
    for entry in engines:
        try:
            hello = EngineClient(entry["socket"], name="redline ps").probe()
        except EngineClientError:
            continue
        rows.append({"pid": hello.get("pid"), "model": hello.get("model") or entry.get("model"),
                     "state": hello.get("state"), "experiment": hello.get("experiment"), "step": hello.get("step"),
                     "run_dir": hello.get("run_dir"), "socket": hello.get("socket"), "consoles": hello.get("clients"),
                     "uptime": round(time.time() - float(hello.get("started_at") or time.time()), 1),
                     "supervised": entry.get("supervised")})
    return rows


def _table(engines: list[dict]) -> str:
    rows = describe_engines(engines)
    lines = [f"{'PID':>7}  {'STATE':<10} {'STEP':>6}  {'CONSOLES':>8}  {'UPTIME':>8}  {'MODEL':<20} RUN DIR"]
    for r in rows:
        lines.append(f"{r['pid']:>7}  {str(r['state']):<10} {str(r['step']):>6}  {str(r['consoles']):>8}  "
                     f"{_duration(r['uptime']):>8}  {str(r['model'])[:20]:<20} {r['run_dir']}"
                     + (f"  (supervised: {r['supervised']})" if r.get("supervised") else ""))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


# -- ps, stop, attach ----------------------------------------------------------------------------------
def ps(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="redline ps", description="This user's running engines (stale sockets "
                                     "of engines that died are removed).")
    parser.add_argument("--json", action="store_true", help="one JSON list instead of a table")
    args = parser.parse_args(argv)
    engines = live_engines()
    if args.json:
        print(json.dumps(describe_engines(engines), indent=1))
    elif engines:
        print(_table(engines))
    else:
        print("no running engines")
    return EXIT_OK


def stop(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="redline stop", description="Stop an engine safely: the experiment is "
                                     "stopped and a final checkpoint written. Exit code 0: the final checkpoint "
                                     "was written; 1: it was not (the message says why); 2: no such engine.")
    parser.add_argument("target", nargs="?", metavar="RUN_DIR|PID")
    parser.add_argument("--socket", type=Path, metavar="PATH")
    args = parser.parse_args(argv)
    path, problem = (args.socket, "") if args.socket else find_socket(args.target)
    if path is None:
        return _fail(problem)
    client = EngineClient(path, name="redline stop")
    try:
        client.start()
    except EngineClientError as exc:
        return _fail(str(exc))
    pid = client.server.get("pid")
    client.take_control()
    command_id = client.stop_engine()
    deadline = time.monotonic() + STOP_DEADLINE
    answer = None
    while answer is None and time.monotonic() < deadline and (client.is_alive() or client.wait_events(0)):
        client.wait_events(0.5)
        for event in client.drain_events():
            if getattr(event, "command_id", None) == command_id and event.kind == "command_done":
                answer = event
    client.shutdown()
    while isinstance(pid, int) and pid != os.getpid() and pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if answer is None:
        return _fail(f"the engine {pid} did not confirm its stop; check `redline ps`", EXIT_FAILED)
    if answer.ok and answer.result:
        print(f"engine {pid} stopped; final checkpoint {answer.result}")
        return EXIT_OK
    return _fail(f"engine {pid} stopped without a final checkpoint: {answer.message}", EXIT_FAILED)


def attach_parser(add_display_options) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="redline attach", description="Open the console on a running engine. "
                                     "Quitting or losing the terminal detaches; the engine keeps running.")
    parser.add_argument("target", nargs="?", metavar="RUN_DIR|PID",
                        help="the engine's run directory or pid (default: the only running engine)")
    parser.add_argument("--socket", type=Path, metavar="PATH",
                        help="attach to this socket, e.g. one forwarded from a server with `ssh -L`")
    parser.add_argument("--readonly", action="store_true", help="watch only: no commands, no emergency stop")
    parser.add_argument("--observer", action="store_true", help="attach as an observer even if nobody has control")
    add_display_options(parser)
    return parser


def attach(args: argparse.Namespace, run_console) -> int:
    path, problem = (args.socket, "") if args.socket else find_socket(args.target)
    if path is None:
        return _fail(problem)
    client = EngineClient(path, readonly=args.readonly, control=not args.observer)
    try:
        client.start()
    except EngineClientError as exc:
        return _fail(str(exc))
    return run_console(client, args)
