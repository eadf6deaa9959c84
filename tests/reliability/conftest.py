"""The reliability ledger: every fault or bad input a test tries is counted.

`make reliability` (tests/reliability/report.py) sets REDLINE_LEDGER to a file and
prints the totals; in a plain `make test` run the records go to a temp file.
Every row says what its test observed: `detected` and `lost` have no defaults, so
a call site cannot record a detection or a loss-free outcome it did not check.
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
    """Counts what one test tried. Each row must be detected and lose nothing: `check` asserts both."""

    path: Path
    test: str
    rows: list = field(default_factory=list)

    def record(self, kind: str, what: str, *, detected: bool, lost: int) -> None:
        if kind not in ("fault", "bad_input"):
            raise ValueError(f"kind must be 'fault' or 'bad_input', not {kind!r}")
        if not isinstance(detected, bool):
            raise TypeError(f"detected must be the bool a test computed, not {detected!r}")
        if not isinstance(lost, int) or lost < 0:
            raise TypeError(f"lost must be a count (an int >= 0), not {lost!r}")
        row = {"test": self.test, "kind": kind, "what": what, "detected": detected, "lost": int(lost)}
        self.rows.append(row)
        with _lock, open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    def fault(self, what: str, *, detected: bool, lost: int) -> None:
        self.record("fault", what, detected=detected, lost=lost)

    def bad_input(self, what: str, *, detected: bool, lost: int) -> None:
        self.record("bad_input", what, detected=detected, lost=lost)

    def check(self) -> None:
        """The campaign check: fails when any row lost something or went undetected."""
        lost = sum(r["lost"] for r in self.rows)
        undetected = [r["what"] for r in self.rows if not r["detected"]]
        assert lost == 0, f"{lost} items lost in {self.test}"
        assert not undetected, f"undetected in {self.test}: {undetected}"


@pytest.fixture
def ledger(request, tmp_path_factory) -> Ledger:
    path = os.environ.get("REDLINE_LEDGER")
    if not path:
        path = str(tmp_path_factory.getbasetemp() / "ledger.jsonl")
    led = Ledger(Path(path), request.node.nodeid)
    yield led
    led.check()
