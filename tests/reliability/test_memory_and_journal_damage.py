"""Bit flips and truncation in the memory database and the alert journal; two processes writing memory.

SQLite keeps no checksums of its own, so a flipped byte inside an observation would be
read back as different data; each observation carries a checksum (engine.memory) and each
journal line one too (engine.alert_journal). A flip that lands in unused space changes
nothing readable: such trials are counted as harmless, not as faults.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from engine.alert_journal import read_journal
from engine.memory import DB_NAME, MemoryStoreError, MemorySystem
from engine.safety_monitor import ALERT_JOURNAL, SafetyMonitor
from tests.reliability.helpers import flip_random_bit, trials, truncate_randomly

ROOT = Path(__file__).resolve().parents[2]
CATEGORIES = ("modification", "coupled_modification", "note")


def everything(memory: MemorySystem) -> list:
    """Every answer the memory gives: all rows, by each category, by each tag."""
    obs = memory.observations
    out = [obs.query()]
    out += [obs.query(category=c) for c in CATEGORIES]
    out += [obs.query(tags=[f"t{i}"]) for i in range(4)]
    out += [obs.query(min_importance=0.7)]
    return [[(o.id, o.timestamp, o.description, o.category, o.importance, o.data, o.tags) for o in q] for q in out]


@pytest.fixture(scope="module")
def memory_template(tmp_path_factory) -> tuple[Path, list]:
    directory = tmp_path_factory.mktemp("memory")
    with MemorySystem(directory) as memory:
        for i in range(150):
            memory.record_observation(f"observation {i}: scaled layer {i % 7}", category=CATEGORIES[i % 3],
                                      importance=(i % 10) / 10, metadata={"i": i, "scale": 1 + i / 100},
                                      tags=[f"t{i % 4}", "run"])
    with MemorySystem(directory) as memory:
        answers = everything(memory)
    return directory, answers


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_memory_database_damage_is_detected(memory_template, tmp_path, ledger, damage):
    source, answers = memory_template
    rng = random.Random(f"memory-{damage}")
    harmless = 0
    n = trials(30, 300)
    for trial in range(n):
        directory = tmp_path / f"t{trial}"
        shutil.copytree(source, directory)
        db = directory / DB_NAME
        (flip_random_bit if damage == "bit flip" else truncate_randomly)(db, rng)
        got, error = None, ""
        try:
            with MemorySystem(directory) as memory:
                got = everything(memory)
        except MemoryStoreError as exc:
            error = str(exc)
        if got == answers:
            harmless += 1  # the flip hit unused space: every query answers as before
            continue
        named = str(db) in error and ("damaged" in error or "not a readable" in error)
        # A changed answer given without an error is data silently lost.
        ledger.fault(f"memory database: {damage}", detected=named, lost=int(got is not None))
    assert harmless < n


@pytest.mark.parametrize("damage", ["bit flip", "truncation"])
def test_alert_journal_damage_is_reported_line_by_line(tmp_path, ledger, damage):
    rng = random.Random(f"journal-{damage}")
    source = tmp_path / "source"
    safety = SafetyMonitor(source)
    for i in range(40):
        safety.raise_alert(("HIGH", "LOW", "CRITICAL")[i % 3], f"alert {i} [bold]markup[/] \x1b[31m", value=i)
    original = read_journal(source / ALERT_JOURNAL)
    assert not original.damaged and len(original.alerts) == 40
    for trial in range(trials(20, 200)):
        run = tmp_path / f"t{trial}"
        shutil.copytree(source, run)
        journal = run / ALERT_JOURNAL
        (flip_random_bit if damage == "bit flip" else truncate_randomly)(journal, rng)
        after = SafetyMonitor(run)  # a new run appends to the damaged journal
        after.raise_alert("INFO", "written after the damage")
        got = read_journal(journal)
        intact = [a for a in got.alerts if a["message"] != "written after the damage"]
        changed = [a for a in intact if a not in original.alerts]  # altered, yet read as intact
        survived_new = got.alerts[-1]["message"] == "written after the damage"
        if damage == "truncation":  # the cut-off tail is gone with the cut; what remains must be exact
            reported = intact == original.alerts[: len(intact)]
        else:
            reported = intact == original.alerts or bool(got.damaged)
        ledger.fault(f"alert journal: {damage}", detected=reported and not changed and survived_new,
                     lost=len(changed) + (not survived_new))

WRITER = r"""
import sys
from engine.memory import MemorySystem
m = MemorySystem(sys.argv[1])
for i in range(int(sys.argv[3])):
    m.record_observation(f"{sys.argv[2]} {i}", category="concurrent", metadata={"i": i}, tags=[sys.argv[2]])
m.close()
"""


@pytest.mark.slow
def test_two_processes_writing_memory_at_once(tmp_path, ledger):
    n = trials(150, 1500)
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), name, str(n)], cwd=ROOT)
             for name in ("alpha", "beta")]
    with MemorySystem(tmp_path) as memory:  # and this process writes too
        ids = [memory.record_observation(f"gamma {i}", category="concurrent", metadata={"i": i}, tags=["gamma"])
               for i in range(n)]
    finished = {name: p.wait(timeout=180) == 0 for name, p in zip(("alpha", "beta"), procs)}
    finished["gamma"] = len(set(ids)) == n  # every write of this process answered with its own row id
    conn = sqlite3.connect(tmp_path / DB_NAME)
    try:
        sound = conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        conn.close()
    with MemorySystem(tmp_path) as memory:
        for name in ("alpha", "beta", "gamma"):
            rows = memory.observations.query(tags=[name])
            got = sorted(o.data["i"] for o in rows)
            ledger.fault("three processes writing one memory database", detected=finished[name] and sound,
                         lost=len(set(range(n)) - set(got)) + (len(got) - len(set(got))))
