"""A background engine's engine.log stays bounded: real processes, real files, whole JSON lines."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from engine.runtime.log_rotation import MAX_BYTES_VARIABLE, LogRotation
from tests.console.test_attach_cli import redline, wait_for
from tests.engine_harness import KEEP_CHANGING, write_experiment
from tests.engine_harness import tiny_model_dir  # noqa: F401  (fixture)

WRITER = """
import sys
from engine.runtime.log_rotation import LogRotation
rotation = LogRotation(sys.argv[1], 1000)
for i in range(100):
    print('{"line": %d, "pad": "%s"}' % (i, "x" * 40), flush=True)
    print("stderr %d" % i, file=sys.stderr, flush=True)
    rotation.check()
print("rotations", rotation.rotations, file=sys.stderr)
"""


def log_lines(path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def test_rotation_moves_stdout_and_stderr_to_a_fresh_file(tmp_path):
    log = tmp_path / "engine.log"
    with open(os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as out:
        subprocess.run([sys.executable, "-c", WRITER, str(log)], stdout=out, stderr=out, check=True,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    older, newest = log_lines(tmp_path / "engine.log.1"), log_lines(log)
    assert older and newest
    assert os.path.getsize(tmp_path / "engine.log.1") < 1000 + 200  # rotated once past the limit, between lines
    assert os.path.getsize(log) < 1000 + 200
    assert oct(os.stat(log).st_mode & 0o777) == "0o600"
    assert newest[-1].startswith("rotations ") and int(newest[-1].split()[1]) > 5
    records = [json.loads(line) for line in older + newest if line.startswith("{")]
    # the two newest files hold an unbroken tail of the run: no line split, none lost between them
    numbers = [r["line"] for r in records]
    assert numbers == list(range(numbers[0], 100))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["engine.log", "engine.log.1"]  # no leftovers


def test_a_stdout_elsewhere_is_left_alone(tmp_path):
    log = tmp_path / "engine.log"
    log.write_text("x" * 5000)
    rotation = LogRotation(log, 1000)  # this test's stdout is not that file
    assert not rotation.writes_here()
    assert not rotation.check()
    assert log.stat().st_size == 5000 and not (tmp_path / "engine.log.1").exists()


@pytest.mark.slow
def test_detached_engine_log_rotates_and_stops_cleanly(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "20K")
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    started = redline("run", "--detach", "--model", str(tiny_model_dir), "--experiment", str(experiment),
                      "--run-dir", str(run_dir), "--device", "cpu")
    assert started.returncode == 0, started.stderr
    try:
        wait_for(lambda: (run_dir / "engine.log.1").exists() and (run_dir / "engine.log").stat().st_size > 1000,
                 "the log to rotate")
    finally:
        stopped = redline("stop", str(run_dir))
    assert stopped.returncode == 0, stopped.stderr
    older, newest = log_lines(run_dir / "engine.log.1"), log_lines(run_dir / "engine.log")
    assert 20 * 1024 <= (run_dir / "engine.log.1").stat().st_size < 200 * 1024
    events = [json.loads(line)["event"] for line in older + newest if line.startswith("{")]
    assert {"step", "health"} <= set(events)
    assert "checkpoint_saved" in [json.loads(line)["event"] for line in newest if line.startswith("{")]
    assert any("engine.log.1" in line for line in newest + older if line.startswith("redline:"))


def test_a_bad_size_is_refused_before_the_engine_starts(tmp_path, monkeypatch):
    monkeypatch.setenv(MAX_BYTES_VARIABLE, "lots")
    started = redline("run", "--detach", "--experiment", "none", "--run-dir", str(tmp_path / "run"),
                      "--device", "cpu")
    assert started.returncode != 0
    assert MAX_BYTES_VARIABLE in started.stderr and "'lots' is not a size" in started.stderr
