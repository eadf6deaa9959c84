"""`make reliability`: run the whole reliability suite (long campaigns included) and print the ledger.

    python -m tests.reliability.report [extra pytest args]
"""

from __future__ import annotations

import collections
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    root = Path(__file__).resolve().parents[2]
    with tempfile.TemporaryDirectory(prefix="redline-ledger-") as tmp:
        ledger = Path(tmp) / "ledger.jsonl"
        env = dict(os.environ, REDLINE_LEDGER=str(ledger), REDLINE_FULL="1")
        cmd = [sys.executable, "-m", "pytest", "tests/reliability", "-m", "", "-q", *argv]
        print("$", " ".join(cmd), flush=True)
        rc = subprocess.call(cmd, cwd=root, env=env)
        rows = [json.loads(line) for line in ledger.read_text().splitlines()] if ledger.exists() else []
    print(render(rows))
    return rc


def render(rows: list[dict]) -> str:
    by_kind: dict[str, collections.Counter] = {}
    by_what: dict[tuple[str, str], collections.Counter] = {}
    for r in rows:
        for key, table in ((r["kind"], by_kind), ((r["kind"], r["what"]), by_what)):
            c = table.setdefault(key, collections.Counter())
            c["tried"] += 1
            c["detected"] += r["detected"]
            c["lost"] += r["lost"]
    lines = ["", "Reliability summary", ""]
    head = f"{'kind':<10} {'what':<58} {'tried':>6} {'detected':>9} {'lost':>5}"
    lines += [head, "-" * len(head)]
    for (kind, what), c in sorted(by_what.items()):
        lines.append(f"{kind:<10} {what[:58]:<58} {c['tried']:>6} {c['detected']:>9} {c['lost']:>5}")
    lines.append("-" * len(head))
    for kind in ("fault", "bad_input"):
        c = by_kind.get(kind, collections.Counter())
        label = "faults" if kind == "fault" else "bad inputs"
        lines.append(f"{'TOTAL':<10} {label:<58} {c['tried']:>6} {c['detected']:>9} {c['lost']:>5}")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
