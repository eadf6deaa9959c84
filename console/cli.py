"""`redline`: the console's command line (also `run --headless|--detach`, `attach`, `ps`, `stop`, `replay`)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from engine.rollback_memory import HELP as ROLLBACK_MEMORY_HELP, rollback_memory_argument

EXIT_CODES = """\
exit codes (console, attach and replay):
  0    quit by the operator: q then y stopped the engine safely (final checkpoint written), or
       q then d detached and left it running (the reattach command is printed)
  1    the console or the engine failed (the message says why)
  2    bad command line (unknown option, missing file, unknown theme), or the engine's packages
       missing or too old (a console-only install: pip install 'redline[engine]'); found before
       anything starts
  129  the terminal went away (SSH drop, SIGHUP): the console detached; the engine keeps running with its
       automatic procedures armed (see --on-detach); reattach with `redline attach RUN_DIR`
  130  Ctrl+C while waiting for a new engine to answer: the engine it started was stopped (the
       message says how)
  143  terminated (SIGTERM): the console detached, the engine keeps running
  5    q then y: the engine's final checkpoint was not written (the save failed, or the engine did not
       stop within --shutdown-timeout); the last line says why. Takes precedence over 0
  with --readonly the engine runs inside the console: 129 and 143 stop it first (it writes nothing)

exit codes (run --headless; details in `redline run --headless --help`):
  0 finished or stopped cleanly · 1 rolled back or the experiment raised; model recovered ·
  2 model or experiment unusable · 3 unrecovered CRITICAL · 4 engine failure ·
  5 final checkpoint not written
"""

KEYS = """\
keys: s save · R restore selected · ctrl+x EMERGENCY STOP · p pause/resume ·
  d compare with baseline · / filter alerts · 1-5 severity toggles · [ ] panels (small
  terminals) · c take control (observer) · ? or F1 help · ctrl+p command palette ·
  q or ctrl+q quit (asks: y stop the engine safely, d detach and leave it running)
keymap: a TOML file of binding id = "key" (ids listed in the help screen), e.g.
  [keymap]
  save = "f2"
  default location: {keymap}
environment: NO_COLOR selects the monochrome theme; TEXTUAL_COLOR_SYSTEM overrides colour depth;
  TEXTUAL_FPS caps frames a second (default here 120: an answer waits for the next frame slot).
"""


FRAME_RATE = "120"  # Textual's frame cap (its own default is 60): an answer waits up to one frame slot to be drawn
CONSOLE_ONLY = (["attach"], ["ps"], ["stop"], ["replay"])  # commands that work without the engine's packages


def _version() -> str:
    try:
        return version("redline")
    except PackageNotFoundError:
        return "unknown"


def _theme_names() -> list[str]:
    from console.themes import load_themes

    return [t.name for t in load_themes()]


def _add_display_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--theme", metavar="NAME", help=f"colour theme: {', '.join(_theme_names())} "
                        "(default redline-dark; redline-mono when NO_COLOR is set)")
    parser.add_argument("--keymap", metavar="FILE", type=Path,
                        help="TOML keymap overriding keys by binding id (default: the user config keymap.toml)")


def console_parser() -> argparse.ArgumentParser:
    from console.keymap import default_keymap_path

    parser = argparse.ArgumentParser(
        prog="redline",
        description="Redline: a safety console for changing a language model's weights while it runs. "
        "Starts the engine as its own background process (serving <run_dir>/engine.sock; its log is "
        "<run_dir>/engine.log) and attaches the full-screen console to it: losing the terminal only detaches, "
        "the experiment goes on (--on-detach), and `redline attach` brings the console back. "
        "Other forms: `redline run --headless [...]` runs an experiment without the console, printing "
        "events as JSON lines; `redline run --detach [...]` starts the engine in the background, serving "
        "<run_dir>/engine.sock; `redline attach [RUN_DIR|PID]` (or `--socket PATH`) opens the console on a "
        "running engine; `redline ps [--json]` lists them; `redline stop [RUN_DIR|PID]` stops one safely; "
        "`redline replay FILE.jsonl` opens the console read-only on a headless log; `redline edits ls|show|revert` reads a run's edit journal and reverts one edit; "
        "`redline checkpoints ls|show|verify|diff|export|gc|rm` works on a run's checkpoints (see its --help).",
        epilog=KEYS.format(keymap=default_keymap_path()) + "\n" + EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", default="demo", metavar="PATH|ORG/NAME|demo",
                        help="a local Hugging Face model directory, a hub id already in the local HF cache "
                        "(HF_HUB_CACHE; nothing is downloaded), or 'demo' (the built-in small model; default)")
    parser.add_argument("--tokenizer", metavar="PATH", type=Path,
                        help="load the tokenizer from this directory instead of the model's (without any "
                        "tokenizer the model is still supervised, with perplexity off)")
    parser.add_argument("--experiment", default="demo", metavar="FILE|demo|none",
                        help="a .py file defining run(ctx), 'demo' (the built-in experiment; default), "
                        "or 'none' (idle: watch, save, restore)")
    parser.add_argument("--run-dir", metavar="DIR", type=Path,
                        help="where checkpoints, the alert journal and memory go "
                        "(default: a per-model directory under the user data directory)")
    parser.add_argument("--readonly", action="store_true",
                        help="observe only: no experiment runs, save/restore/stop/pause are hidden and refused, "
                        "nothing is written to the run directory")
    parser.add_argument("--device", metavar="DEV", help="torch device: cuda, cuda:1, cpu, or auto (spread over every visible GPU) (default: cuda if available)")
    parser.add_argument("--dtype", metavar="DTYPE", help="model dtype: bfloat16, float16, float32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--rollback-memory", default="auto", metavar="SIZE|auto|off", type=rollback_memory_argument,
                        help=ROLLBACK_MEMORY_HELP)
    parser.add_argument("--no-forensic", action="store_true",
                        help="on emergency stop, do not keep the rolled-back-from state as a forensic checkpoint")
    parser.add_argument("--policy", default=None, metavar="FILE",
                        help="a TOML policy file: thresholds, rule parameters and actions over the defaults "
                             "(and over policy.toml in the run directory)")
    parser.add_argument("--shutdown-timeout", type=float, default=120.0, metavar="S",
                        help="seconds to wait, on quit, for the experiment to stop and the final checkpoint "
                        "to be written before exiting with code 5 (default 120)")
    add_on_detach_option(parser)
    _add_display_options(parser)
    parser.add_argument("--version", action="version", version=f"redline {_version()}")
    return parser


def add_on_detach_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--on-detach", choices=("continue", "pause", "stop"), default="continue",
                        help="what the engine does when its last console leaves: continue (default), pause "
                        "the experiment at its next step until a console attaches, or stop safely with a "
                        "final checkpoint")


def replay_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redline replay",
        description="Open the console, read-only, on an event log written by `redline run --headless`.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("log", type=Path, metavar="FILE.jsonl", help="the JSON-lines event log")
    parser.add_argument("--speed", type=float, metavar="X",
                        help="play back at X times the recorded pace (default: show everything at once)")
    _add_display_options(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # read by Textual when it is imported (later, with the app); a frame is drawn only when something changed,
    # so the cap costs nothing while the screen is still (bench/attach.py part 5: p50 40 -> 30 ms, p95 63 -> 40)
    os.environ.setdefault("TEXTUAL_FPS", FRAME_RATE)
    if argv[:1] not in CONSOLE_ONLY and not {"-h", "--help", "--version"} & set(argv):
        from engine.requirements_check import engine_problem

        if problem := engine_problem():  # a console-only install, or an old system torch/transformers
            return _fail(problem)
    if argv[:1] == ["run"] and "--detach" in argv[1:]:
        from console.remote_cli import run_detached

        return run_detached(argv[1:])
    if argv[:1] == ["run"]:
        from engine.runtime.headless import main as headless_main

        return headless_main(argv[1:])
    if argv[:1] == ["edits"]:
        from engine.edits.cli import main as edits_main

        return edits_main(argv[1:])
    if argv[:1] in (["attach"], ["ps"], ["stop"]):
        from console import remote_cli

        if argv[0] == "attach":
            args = remote_cli.attach_parser(_add_display_options).parse_args(argv[1:])
            if problem := _check_display_options(args):
                return _fail(problem)
            return remote_cli.attach(args, run_console)
        return (remote_cli.ps if argv[0] == "ps" else remote_cli.stop)(argv[1:])
    if argv[:1] == ["replay"]:
        return _replay(replay_parser().parse_args(argv[1:]))
    if argv[:1] == ["checkpoints"]:
        from engine.checkpoints_cli.command_line import main as checkpoints_main

        return checkpoints_main(argv[1:])
    return _console(console_parser().parse_args(argv))


def _fail(message: str, code: int = 2) -> int:
    print(f"redline: {message}", file=sys.stderr)
    return code


def _check_display_options(args: argparse.Namespace) -> str | None:
    if args.theme is not None and args.theme not in _theme_names():
        return f"unknown theme {args.theme!r}; available: {', '.join(_theme_names())}"
    return None


def _console(args: argparse.Namespace) -> int:
    if problem := _check_display_options(args):
        return _fail(problem)
    experiment = args.experiment
    if experiment not in ("demo", "none") and not Path(experiment).is_file():
        return _fail(f"experiment file {experiment!r} not found; give a .py file defining run(ctx), 'demo' or 'none'")
    if problem := _check_model_options(args):
        return _fail(problem)
    if args.policy is not None:
        from engine.policy_file import PolicyError, load_policy_file

        try:
            load_policy_file(args.policy)
        except PolicyError as exc:
            return _fail(f"--policy: {exc}")
    if args.readonly:
        return _console_in_process(args)
    return _console_detachable(args)


def _console_in_process(args: argparse.Namespace) -> int:
    """--readonly: the engine in this process (it writes nothing to the run dir, not even a socket)."""
    from engine.runtime import Engine, EngineConfig

    config = EngineConfig(
        model=args.model,
        experiment=None if args.experiment == "none" else args.experiment,
        run_dir=args.run_dir,
        device=args.device,
        dtype=args.dtype,
        readonly=True,
        forensic_checkpoints=not args.no_forensic,
        threads=engine_threads(),
        tokenizer=str(args.tokenizer) if args.tokenizer is not None else None,
        policy_file=args.policy,
        shutdown_timeout=args.shutdown_timeout,
        rollback_memory=args.rollback_memory,
    )
    return run_console(Engine(config), args)


def _console_detachable(args: argparse.Namespace) -> int:
    """Start the engine as its own background process and attach to it: losing the terminal only detaches."""
    from console import remote_cli
    from console.engine_client import EngineClient, EngineClientError
    from engine.paths import resolve_run_dir

    run_dir = resolve_run_dir(args.run_dir, args.model).absolute()
    try:
        _pid, sock = remote_cli.start_engine(engine_argv(args, run_dir), run_dir, progress=_progress)
    except remote_cli.EngineStartError as exc:
        if exc.code == 2 and _offer_attach(run_dir):
            return remote_cli.attach(argparse.Namespace(**{**vars(args), "target": str(run_dir), "socket": None,
                                                           "observer": False}), run_console)
        return _fail(str(exc), exc.code)
    client = EngineClient(sock)
    try:
        client.start()
    except EngineClientError as exc:
        return _fail(f"{exc}; the engine may still be running: `redline ps`", 1)
    return run_console(client, args)


def engine_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The `redline run` options that start the engine the console's options describe."""
    argv = ["--model", args.model, "--experiment", args.experiment, "--run-dir", str(run_dir),
            "--shutdown-timeout", str(args.shutdown_timeout), "--on-detach", args.on_detach,
            "--rollback-memory", str(args.rollback_memory)]
    for option, value in (("--device", args.device), ("--dtype", args.dtype), ("--tokenizer", args.tokenizer),
                          ("--policy", args.policy)):
        if value is not None:
            argv += [option, str(value)]
    return argv + (["--no-forensic"] if args.no_forensic else [])


def _progress(text: str) -> None:
    print(f"redline: {text}", file=sys.stderr, flush=True)


def _offer_attach(run_dir: Path) -> bool:
    """An engine already serves `run_dir`: on a terminal, ask whether to attach to it instead."""
    if not (sys.stdin.isatty() and sys.stderr.isatty()):
        return False
    print(f"redline: an engine already serves {run_dir}.", file=sys.stderr)
    try:
        answer = input("Attach to it? [y/N] ")
    except (EOFError, KeyboardInterrupt):
        return False
    return answer.strip().lower() in ("y", "yes")


def _check_model_options(args: argparse.Namespace) -> str | None:
    """Why --model or --tokenizer cannot work, found before the console starts (torch is not imported)."""
    from engine.model_source import ModelLoadError, locate_model_dir

    try:
        locate_model_dir(args.model)
    except ModelLoadError as exc:
        return str(exc)
    if args.tokenizer is not None and not args.tokenizer.is_dir():
        return (f"tokenizer directory {str(args.tokenizer)!r} not found; give a folder written by "
                "tokenizer.save_pretrained, or leave --tokenizer out to use the model's own")
    return None


def engine_threads() -> int | None:
    """Leave one core to the UI: on two cores torch's two threads starved the event loop."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None  # the operator chose
    return max(1, (os.cpu_count() or 2) - 1)


def _replay(args: argparse.Namespace) -> int:
    if problem := _check_display_options(args):
        return _fail(problem)
    from console.replay import ReplayError, ReplaySource

    try:
        source = ReplaySource(args.log, speed=args.speed)
    except (ReplayError, ValueError) as exc:
        return _fail(str(exc))
    return run_console(source, args)


def run_console(source, args: argparse.Namespace) -> int:
    """Run the app on `source`; whatever happens, the engine is stopped before returning."""
    from console.app import EXIT_ERROR, EXIT_NO_FINAL_CHECKPOINT, RedlineApp
    from console.bindings import BINDINGS
    from console.keymap import default_keymap_path, load_keymap
    from console.latency_trace import run_profiled

    keymap_path = args.keymap or default_keymap_path()
    keymap, notes = load_keymap(keymap_path, BINDINGS, required=args.keymap is not None)
    app = RedlineApp(source, theme=args.theme, keymap=keymap, notes=notes)
    code = EXIT_ERROR
    try:
        run_profiled(app.run)
        code = app.return_code if app.return_code is not None else EXIT_ERROR
    finally:
        if source.is_alive() and app.shutdown_result is None:
            app.shutdown_result = source.shutdown()
        if app.terminal_watch is not None:
            app.terminal_watch.stop()
    result = app.shutdown_result
    if result is not None and not result.ok:
        code = EXIT_NO_FINAL_CHECKPOINT
    lines = [app.exit_reason] if app.exit_reason and code else []
    if result is not None and not result.ok:
        lines.append(result.describe())  # the last line: the model's last state was not saved
    if getattr(source, "detaches", False) and not app.engine_stopped and code != EXIT_NO_FINAL_CHECKPOINT:
        lines.append(f"detached; the engine keeps running. Reattach: {source.reattach_hint}")
    for line in lines:
        try:
            print(f"redline: {line}", file=sys.stderr)
        except OSError:
            pass
    return code


if __name__ == "__main__":
    sys.exit(main())
