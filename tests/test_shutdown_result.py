"""Honest shutdown: the final checkpoint is written, or the result, the exit code and the last line say why not.

Two real ways to lose it: the final save fails (a run directory that turned read-only, a file
size limit standing in for a full disk) and a shutdown that times out (an experiment stuck in
a long C call, which no asynchronous exception can interrupt).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.events import LogLine
from engine.runtime.shutdown_result import EXIT_NO_FINAL_CHECKPOINT, FAILED, TIMED_OUT, WRITTEN
from tests.engine_harness import start_engine, tiny_model_dir, write_experiment  # noqa: F401  (fixture)
from tests.reliability.test_disk_faults import can_mount, tmpfs

REPO = Path(__file__).resolve().parents[1]

LOOP = """
    import torch

    def run(ctx):
        while True:
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.down_proj.weight.mul_(1.001)
            ctx.step("tick")
            ctx.wait(0.02)
"""

STUCK = """
    import time

    def run(ctx):
        ctx.step("about to sleep")
        ctx.log("sleeping now")  # nothing checks the stop flag between this line and the sleep
        time.sleep({seconds})  # one C call: the stop flag and the asynchronous exception wait for it
"""


def test_console_and_headless_share_the_exit_code():
    from console.app import EXIT_NO_FINAL_CHECKPOINT as console_code

    assert console_code == EXIT_NO_FINAL_CHECKPOINT == 5


def test_a_written_final_checkpoint_is_named(tiny_model_dir, tmp_path):
    driver = start_engine(tiny_model_dir, tmp_path / "run")
    result = driver.engine.shutdown(timeout=60)
    assert result.status == WRITTEN and result.ok
    assert (tmp_path / "run" / "checkpoints" / "manifests" / f"{result.checkpoint_id}.json").is_file()
    assert driver.engine.shutdown() == result  # idempotent


@pytest.mark.skipif(not can_mount(), reason="needs a tmpfs to fill")
def test_final_save_on_a_disk_that_filled_up_is_reported(tiny_model_dir, tmp_path):
    checkpoints = tmp_path / "run" / "checkpoints"
    with tmpfs(checkpoints, "4m"):
        driver = start_engine(tiny_model_dir, tmp_path / "run")
        with open(checkpoints / "filler", "wb") as filler:  # someone else takes the rest of the disk
            with pytest.raises(OSError):
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        result = driver.engine.shutdown(timeout=60)
        assert not driver.engine.is_alive()
        assert result.status == FAILED and not result.ok
        assert "disk is full" in result.reason
        assert result.describe().startswith("the final checkpoint was NOT written: the save failed")


def test_a_shutdown_that_times_out_says_so_and_a_later_one_still_saves(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, STUCK.format(seconds=6))
    driver = start_engine(tiny_model_dir, tmp_path / "run", experiment=experiment)
    driver.wait_for(lambda e: isinstance(e, LogLine) and e.text == "sleeping now")
    result = driver.engine.shutdown(timeout=0.5)
    assert result.status == TIMED_OUT and not result.ok
    assert "did not stop within" in result.reason and "about to sleep" in result.reason
    assert driver.engine.is_alive()
    later = driver.engine.shutdown(timeout=60)  # the sleep ends, the experiment unwinds, the save runs
    assert later.status == WRITTEN, later


def _headless(tmp_path: Path, model_dir: Path, experiment: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "engine.runtime.headless", "--headless", "--model", str(model_dir),
                             "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--experiment", str(experiment),
                             *extra], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _wait_for(proc: subprocess.Popen, wanted) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if wanted(json.loads(line)):
            return
    proc.kill()
    raise AssertionError(f"the experiment never got there: {proc.stderr.read()[-2000:]}")


@pytest.mark.slow
def test_headless_sigterm_with_a_failing_final_save_exits_5(tiny_model_dir, tmp_path):
    proc = _headless(tmp_path, tiny_model_dir, write_experiment(tmp_path, LOOP))
    _wait_for(proc, lambda e: e["event"] == "step" and e["step"] >= 2)
    resource.prlimit(proc.pid, resource.RLIMIT_FSIZE, (0, 0))  # no file may grow: as good as a full disk
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == EXIT_NO_FINAL_CHECKPOINT, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("redline: the final checkpoint was NOT written: the save failed"), last


@pytest.mark.slow
def test_headless_sigterm_with_a_stuck_experiment_exits_5(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, STUCK.format(seconds=300))
    proc = _headless(tmp_path, tiny_model_dir, experiment, "--shutdown-timeout", "1")
    _wait_for(proc, lambda e: e["event"] == "log" and e["text"] == "sleeping now")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_NO_FINAL_CHECKPOINT, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert "the final checkpoint was NOT written: the engine did not stop within" in last, last


@pytest.mark.slow
def test_console_q_y_with_a_stuck_experiment_exits_5_with_the_reason(tiny_model_dir, tmp_path, monkeypatch):
    import pexpect

    from tests.console.test_cli_pty import spawn

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    experiment = write_experiment(tmp_path, STUCK.format(seconds=300))
    child = spawn("--model", str(tiny_model_dir), "--experiment", str(experiment), "--run-dir", str(tmp_path / "run"),
                  "--device", "cpu", "--shutdown-timeout", "1", size=(48, 160))
    child.expect("sleeping now")
    child.send("q")
    child.expect("Stop engine")
    child.send("y")  # stop the engine: it cannot stop within 1 s, so its process ends without the final save
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == EXIT_NO_FINAL_CHECKPOINT
    tail = child.before.replace("\r", "").strip().splitlines()[-1]
    assert "the final checkpoint was NOT written: the engine did not stop within" in tail, tail
