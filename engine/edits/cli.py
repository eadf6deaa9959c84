"""`redline edits ls|show ID|revert ID [--cascade] [--run-dir DIR]`: the edit journal from a shell.

ls and show read the journal (no torch; they work while an engine runs). revert changes the
model, so it runs only when no engine holds it, and then works in the newest checkpoint
(at_rest.py); while an engine holds the model it says so and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from engine.edits.errors import JournalBusy, RevertFailed, RevertRefused
from engine.edits.owner import owner_pid
from engine.edits.records import EditRecord, JournalDB


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="redline edits", description="The edit journal of a run directory: "
                                "every edit made through EditJournal (ctx.edit), its gate results and reverts.")
    sub = p.add_subparsers(dest="command", required=True, metavar="ls|show|revert")
    for name, text in (("ls", "list every entry, oldest first"), ("show", "one entry in full"),
                       ("revert", "revert one edit in the newest checkpoint (only while no engine holds the model)")):
        cmd = sub.add_parser(name, help=text, description=text)
        if name != "ls":
            cmd.add_argument("id", type=int, metavar="ID", help="the journal entry's id (from `redline edits ls`)")
        if name == "revert":
            cmd.add_argument("--cascade", action="store_true", help="also revert the later edits that touched "
                             "the same tensors, newest first")
        cmd.add_argument("--run-dir", type=Path, metavar="DIR",
                         help="the run directory (default: the demo model's, as the console uses)")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    run_dir = args.run_dir
    if run_dir is None:
        from engine.paths import DEMO_MODEL_NAME, default_run_dir

        run_dir = default_run_dir(DEMO_MODEL_NAME)
    edits_dir = run_dir.expanduser() / "edits"
    try:
        db = JournalDB(edits_dir, create=False)
    except FileNotFoundError:
        return _fail(f"no edit journal in {run_dir} (nothing was edited through EditJournal there)", 1)
    try:
        if args.command == "ls":
            for record in db.list():
                print(summary(record))
            return 0
        if args.command == "show":
            print(json.dumps(details(db.show(args.id)), indent=2, ensure_ascii=False))
            return 0
    except KeyError as exc:
        return _fail(str(exc.args[0]), 1)
    finally:
        db.close()
    return _revert(run_dir.expanduser(), args.id, args.cascade)


def _revert(run_dir: Path, edit_id: int, cascade: bool) -> int:
    holder = owner_pid(run_dir / "edits")
    if holder is not None:
        return _fail(f"an engine (process {holder}) holds the model of {run_dir}: a revert from the command line "
                     "would go behind its back. Revert in that process (ctx.journal.revert), or stop it first. "
                     "Nothing was changed.", 1)
    from engine.edits.at_rest import revert_in_checkpoint

    try:
        done = revert_in_checkpoint(run_dir, edit_id, cascade=cascade)
    except (RevertRefused, RevertFailed, JournalBusy, KeyError) as exc:
        return _fail(str(exc.args[0] if isinstance(exc, KeyError) else exc), 1)
    print(f"no engine holds the model: reverted edit(s) {', '.join(map(str, done.edits))} in the newest "
          f"checkpoint {done.checkpoint_from}, giving checkpoint {done.checkpoint_to} "
          f"(journal entries {', '.join(map(str, done.entries))}). Restore it to use it.")
    return 0


def summary(record: EditRecord) -> str:
    worst = max((t.relative for t in record.tensors if t.relative is not None), default=None)
    delta = f"max |dW|/|W| {worst:.3g}" if worst is not None else ""
    state = f"reverted by {record.reverted_by}" if record.reverted_by else record.outcome
    if record.kind == "revert":
        state = f"reverts {record.reverts}"
    return (f"{record.id:>6}  {record.time_iso}  {record.kind:<6}  {state:<16}  "
            f"{len(record.tensors)} tensor(s)  {delta:<22}  {record.description}")


def details(record: EditRecord) -> dict:
    return {
        "id": record.id, "kind": record.kind, "description": record.description, "time": record.time_iso,
        "outcome": record.outcome, "reasons": record.reasons, "reverts": record.reverts,
        "reverted_by": record.reverted_by, "meta": record.meta, "gate": record.gate,
        "tensors": [t.__dict__ | {"shape": list(t.shape)} for t in record.tensors],
    }


def _fail(message: str, code: int) -> int:
    print(f"redline edits: {message}", file=sys.stderr)
    return code
