"""The reliability ledger: every fault or bad input a test tries is counted.

`make reliability` (tests/reliability/report.py) sets REDLINE_LEDGER to a file and
prints the totals; in a plain `make test` run the records go to a temp file.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

_lock = threading.Lock()


@dataclass
class Ledger:
    """Counts what one test tried. `lost` must stay 0: it is asserted, not just reported."""

    path: Path
    test: str
    rows: list = field(default_factory=list)

    def record(self, kind: str, what: str, *, detected: bool, lost: int = 0) -> None:
        if kind not in ("fault", "bad_input"):
            raise ValueError(f"kind must be 'fault' or 'bad_input', not {kind!r}")
        row = {"test": self.test, "kind": kind, "what": what, "detected": bool(detected), "lost": int(lost)}
        self.rows.append(row)
        with _lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def fault(self, what: str, *, detected: bool = True, lost: int = 0) -> None:
        self.record("fault", what, detected=detected, lost=lost)

    def bad_input(self, what: str, *, detected: bool = True, lost: int = 0) -> None:
        self.record("bad_input", what, detected=detected, lost=lost)


@pytest.fixture
def ledger(request, tmp_path_factory) -> Ledger:
    path = os.environ.get("REDLINE_LEDGER")
    if not path:
        path = str(tmp_path_factory.getbasetemp() / "ledger.jsonl")
    led = Ledger(Path(path), request.node.nodeid)
    yield led
    lost = sum(r["lost"] for r in led.rows)
    undetected = [r["what"] for r in led.rows if not r["detected"]]
    assert lost == 0, f"{lost} items lost in {request.node.nodeid}"
    assert not undetected, f"undetected: {undetected}"
