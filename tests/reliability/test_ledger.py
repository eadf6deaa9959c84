"""The ledger itself: a row is only as good as what its test observed."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from tests.reliability.conftest import Ledger
from tests.reliability.report import render

HERE = Path(__file__).resolve().parent


def test_a_row_recorded_undetected_fails_the_campaign_check(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl", "t")
    ledger.fault("a fault the test saw handled", detected=True, lost=0)
    ledger.check()
    ledger.bad_input("an input nothing refused", detected=False, lost=0)
    with pytest.raises(AssertionError, match="undetected in t: \\['an input nothing refused'\\]"):
        ledger.check()
    rows = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [r["detected"] for r in rows] == [True, False]
    assert "TOTAL      bad inputs" in render(rows) and render(rows).splitlines()[-1].split()[-2:] == ["0", "0"]


def test_a_row_that_lost_something_fails_the_campaign_check(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl", "t")
    ledger.fault("a save under a full disk", detected=True, lost=2)
    with pytest.raises(AssertionError, match="2 items lost in t"):
        ledger.check()


def test_the_api_refuses_a_row_without_an_observation(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl", "t")
    with pytest.raises(TypeError):
        ledger.fault("no detected", lost=0)
    with pytest.raises(TypeError):
        ledger.bad_input("no lost", detected=True)
    with pytest.raises(TypeError, match="bool"):
        ledger.fault("an error message is not a verdict", detected="Permission denied", lost=0)
    with pytest.raises(TypeError, match="count"):
        ledger.fault("a negative loss", detected=True, lost=-1)
    assert ledger.rows == [] and not (tmp_path / "ledger.jsonl").exists()


def test_no_call_site_writes_its_verdict_as_a_literal():
    """`detected` and `lost` at every call site are expressions over what the test checked."""
    literal = []
    for path in sorted(HERE.glob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr in ("fault", "bad_input") and getattr(node.func.value, "id", "") == "ledger"
                    and path.name != Path(__file__).name):
                given = {k.arg: k.value for k in node.keywords}
                literal += [f"{path.name}:{node.lineno} {name}" for name in ("detected", "lost")
                            if isinstance(given.get(name), ast.Constant)]
    assert literal == []
