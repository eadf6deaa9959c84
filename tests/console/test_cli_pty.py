"""`redline` as a user runs it: a real process in a real pseudo-terminal (pexpect)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pexpect
import pytest

from tests.console.conftest import RECORDING
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).parent / "redline"
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "console.cli"]
DEADLINE = 60  # seconds allowed for anything to appear; generous for a loaded machine


def spawn(*args: str, term: str = "screen-256color", size=(24, 80)) -> pexpect.spawn:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "COLORTERM", "TEXTUAL_COLOR_SYSTEM")}
    env.update(TERM=term, TZ="UTC")
    return pexpect.spawn(COMMAND[0], [*COMMAND[1:], *args], cwd=ROOT, env=env, dimensions=size,
                         encoding="utf-8", codec_errors="replace", timeout=DEADLINE)


def wait_exit(child: pexpect.spawn) -> int:
    """The exit code of a child whose terminal was taken away (so pexpect cannot read its EOF)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        pid, status = os.waitpid(child.pid, os.WNOHANG)
        if pid:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    raise AssertionError("redline did not exit after losing its terminal")


def test_help_documents_every_option():
    out = subprocess.run([*COMMAND, "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for option in ("--model", "--experiment", "--run-dir", "--theme", "--readonly", "--device", "--dtype",
                   "--no-forensic", "--keymap", "--version", "run --headless", "replay", "129", "ctrl+x"):
        assert option in out, option
    version = subprocess.run([*COMMAND, "--version"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert version.stdout.startswith("redline ")
    headless = subprocess.run([*COMMAND, "run", "--headless", "--help"], cwd=ROOT, capture_output=True, text=True)
    assert headless.returncode == 0 and "exit codes" in headless.stdout  # dispatched to engine.runtime.headless


def test_bad_input_is_a_clear_error_with_code_2(tmp_path):
    run = subprocess.run([*COMMAND, "--experiment", str(tmp_path / "nope.py")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "nope.py" in run.stderr and "not found" in run.stderr
    run = subprocess.run([*COMMAND, "replay", str(tmp_path / "x.jsonl")], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and "no such file" in run.stderr


def test_replay_in_a_pseudo_terminal_keys_and_quit():
    child = spawn("replay", str(RECORDING))
    child.expect("RUNNING")
    child.expect("Health")
    child.send("?")
    child.expect("Redline console")
    child.send("?")  # closes help (a lone ESC followed by "]" would read as an escape sequence)
    child.send("]")  # compact layout at 80x24: next panel
    child.expect("CRIT")
    child.send("q")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


@pytest.mark.slow
def test_losing_the_terminal_exits_with_129():
    child = spawn("replay", str(RECORDING))
    child.expect("RUNNING")
    child.send("?")  # keep the screen busy so writes are queued when the tty goes
    child.expect("Redline console")
    os.close(child.child_fd)  # the SSH connection drops: the tty hangs up, SIGHUP goes to the session
    child.child_fd = -1
    assert wait_exit(child) == 129


def test_sigterm_stops_safely_with_143():
    child = spawn("replay", str(RECORDING))
    child.expect("RUNNING")
    os.kill(child.pid, signal.SIGTERM)
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 143


def test_sixteen_colour_terminal_gets_no_truecolor():
    child = spawn("replay", str(RECORDING), term="xterm", size=(48, 160))
    child.expect("RUNNING")
    child.expect("Checkpoints")
    seen = child.before + child.after
    child.send("q")
    child.expect(pexpect.EOF)
    seen += child.before
    colours = re.findall(r"\x1b\[([0-9;]+)m", seen)
    assert any(re.search(r"(^|;)(3[0-7]|9[0-7])(;|$)", c) for c in colours)  # the 16 ANSI colours are used
    assert not any(re.search(r"(^|;)[34]8;[25];", c) for c in colours)  # neither truecolor nor 256-colour codes
