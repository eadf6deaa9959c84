"""`make bench`: run every benchmark in turn, each printing ours against the alternative.

    python bench/run_all.py [--quick] [NAME ...]
    # NAME: checkpoints, scan, stop, console, policy, edits, attach, supervise

`bench/gpu_check.py` is not among them: it is the one-command check of every CUDA path, run on a GPU
machine (`--device cpu` runs its steps small on the CPU).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCHES = ("checkpoints", "scan", "stop", "console", "policy", "edits", "attach", "supervise")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    flags = [a for a in args if a.startswith("-")]
    names = [a for a in args if not a.startswith("-")] or list(BENCHES)
    unknown = sorted(set(names) - set(BENCHES))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHES)}", file=sys.stderr)
        return 2
    here = Path(__file__).resolve().parent
    failed = []
    for name in names:
        print(f"\n=== bench/{name}.py {' '.join(flags)}".rstrip(), flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, str(here / f"{name}.py"), *flags], cwd=here.parent)
        print(f"=== {name}: exit {rc}, {time.perf_counter() - t0:.1f} s", flush=True)
        if rc:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
