"""`redline checkpoints SUBCOMMAND [--run-dir DIR] [--json]`: the parser, the exit codes, the dispatch.

Torch-free at import: `redline checkpoints --help` answers at once; each subcommand imports
what it needs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from engine.checkpoints_cli.failures import EXIT_DAMAGED, EXIT_FAILED, EXIT_OK, EXIT_USAGE, CommandFailed

EXIT_CODES = f"""\
exit codes:
  {EXIT_OK}  done; verify: every checkpoint checked is intact
  {EXIT_DAMAGED}  damage found: verify names every damaged checkpoint and tensor; show, diff and export stop
     at a damaged checkpoint; gc removed no tensor file because a manifest is damaged
  {EXIT_USAGE}  bad command line: unknown option, a malformed or unknown checkpoint id, no checkpoint store
     at the run directory, an export target that is not empty
  {EXIT_FAILED}  the work could not be done: the file system refused (read-only, full, permissions), or
     export cannot rebuild the model's config
With --json the result is one JSON document on stdout; errors go to stderr as text and, with --json,
also as {{"error": ..., "exit_code": ...}} on stdout. Progress bars appear on stderr only on a terminal.
Safe while an engine runs on the same directory: readers hold the store's shared lock, gc and rm its
exclusive lock, so nothing a checkpoint or a save in progress needs is ever removed.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="redline checkpoints",
        usage="redline checkpoints SUBCOMMAND [ARGS] [--run-dir DIR] [--json]",
        description="The checkpoints of a run directory, from the shell: list, inspect, verify, compare, export, "
        "clean up. No model is loaded.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, metavar="DIR",
                        help="the run directory (as given to `redline --run-dir`) or a checkpoint directory "
                        "(a CheckpointManager's checkpoint_dir); default: the demo model's run directory")
    common.add_argument("--json", action="store_true", help="print the result as one JSON document")
    sub = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)

    def add(name: str, summary: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], help=summary, description=summary, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    add("ls", "list the checkpoints, oldest first (damaged manifests are listed as such)")
    add("show", "one checkpoint: metadata, health at save, tensors, size, what it shares with others") \
        .add_argument("id", metavar="ID")
    add("verify", "re-hash every tensor file; exit 1 naming every damaged checkpoint and tensor") \
        .add_argument("ids", nargs="*", metavar="ID", help="checkpoints to verify (default: all)")
    diff = add("diff", "per-tensor change from checkpoint A to B, largest first")
    diff.add_argument("a", metavar="A")
    diff.add_argument("b", metavar="B")
    diff.add_argument("--top", type=int, default=20, metavar="N", help="show the N largest (default 20; 0: all)")
    export = add("export", "write a checkpoint as a Hugging Face directory (or one .safetensors file)")
    export.add_argument("id", metavar="ID")
    export.add_argument("out_dir", nargs="?", type=Path, metavar="DIR",
                        help="a new (or empty) directory that AutoModelForCausalLM.from_pretrained loads")
    export.add_argument("--single-file", type=Path, metavar="PATH", help="write one .safetensors file instead")
    export.add_argument("--config-from", metavar="MODEL",
                        help="take the model config from this model directory or cached hub id (for checkpoints "
                        "that store none)")
    add("gc", "remove unreferenced tensor files and crash leftovers (a dry run unless --yes)") \
        .add_argument("--yes", action="store_true", help="remove them (default: only list them)")
    add("rm", "delete checkpoints and the tensor files nothing else uses") \
        .add_argument("ids", nargs="+", metavar="ID")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except CommandFailed as exc:
        return _fail(args, str(exc), exc.code)
    except KeyboardInterrupt:
        return _fail(args, "interrupted", 130)


def _run(args: argparse.Namespace) -> int:
    from engine.checkpoints_cli.run_store import open_store

    command = args.subcommand
    store = open_store(args.run_dir, writes=command == "rm" or (command == "gc" and args.yes))
    if command == "ls":
        from engine.checkpoints_cli.inventory import list_command

        return list_command(store, args.json)
    if command == "show":
        from engine.checkpoints_cli.inventory import show_command

        return show_command(store, args.id, args.json)
    if command == "verify":
        from engine.checkpoints_cli.verification import verify_command

        return verify_command(store, args.ids, args.json)
    if command == "diff":
        from engine.checkpoints_cli.differences import diff_command

        return diff_command(store, args.a, args.b, args.top, args.json)
    if command == "export":
        from engine.checkpoints_cli.exporting import export_command

        return export_command(store, args.id, args.out_dir, args.single_file, args.config_from, args.json)
    if command == "gc":
        from engine.checkpoints_cli.cleanup import gc_command

        return gc_command(store, args.yes, args.json)
    from engine.checkpoints_cli.cleanup import rm_command

    return rm_command(store, args.ids, args.json)


def _fail(args: argparse.Namespace, message: str, code: int) -> int:
    print(f"redline checkpoints: {message}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps({"error": message, "exit_code": code}))
    return code


if __name__ == "__main__":
    sys.exit(main())
