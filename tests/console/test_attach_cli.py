"""`redline run --detach`, `ps`, `attach` (in a real pseudo-terminal), `stop`: real processes end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pexpect
import pytest

from engine.runtime.detached import SERVE_DELAY_VARIABLE
from engine.runtime.registry import pid_alive
from engine.runtime.socket_paths import socket_path
from tests.console.test_cli_pty import COMMAND, DEADLINE, ROOT, spawn, wait_exit
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)
from tests.engine_harness import KEEP_CHANGING


def redline(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([*COMMAND, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def ps() -> list[dict]:
    run = redline("ps", "--json")
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def wait_for(condition, what: str, timeout: float = DEADLINE):
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}")
        time.sleep(0.2)
    return value


def expect_all(child: pexpect.spawn, *texts: str) -> None:
    """Wait until every text has appeared on the terminal, in any order (one frame may draw them in any order).

    Each text is ticked off when seen, so a full frame longer than the look-back window can't hide an early one."""
    missing, seen, deadline = set(texts), "", time.monotonic() + DEADLINE
    while missing:
        assert time.monotonic() < deadline, f"{sorted(missing)} never appeared; the terminal's last output: {seen[-1500:]!r}"
        child.expect(r"[\s\S]+")
        seen = seen[-5000:] + child.after
        missing = {text for text in missing if text not in seen}


@pytest.mark.slow
def test_detach_ps_attach_kill_reattach_stop(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    started = redline("run", "--detach", "--model", str(tiny_model_dir), "--experiment", str(experiment),
                      "--run-dir", str(run_dir), "--device", "cpu")
    assert started.returncode == 0, started.stderr
    assert f"run dir: {run_dir}" in started.stdout
    pid = int(next(line for line in started.stdout.splitlines() if line.startswith("pid:")).split()[1])
    try:
        [engine] = wait_for(lambda: [e for e in ps() if e["state"] == "running"], "the experiment to run")
        assert engine["pid"] == pid and engine["run_dir"] == str(run_dir) and engine["consoles"] == 0

        console = spawn("attach", str(run_dir), size=(48, 160))
        console.expect("RUNNING")
        console.expect("CONTROLLER · 1 console")
        wait_for(lambda: ps()[0]["consoles"] == 1, "the console to count")
        os.kill(console.pid, signal.SIGKILL)  # the console dies without a word
        console.close(force=True)
        step = ps()[0]["step"]
        wait_for(lambda: ps()[0]["step"] > step + 3, "the engine to keep stepping without its console")
        assert ps()[0]["consoles"] == 0

        again = spawn("attach", str(pid), size=(48, 160))
        again.expect("Baseline checkpoint")  # an alert from before the first console died
        again.expect("baseline")  # the checkpoint table
        again.send("q")
        again.expect("Detach")  # q asks: stop the engine, detach, or cancel
        again.send("d")
        again.expect(f"Reattach: redline attach {run_dir}")
        again.expect(pexpect.EOF)
        again.close()
        assert again.exitstatus == 0
        assert ps()[0]["state"] == "running"  # detached: the engine keeps running

        stopped = redline("stop", str(run_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert "final checkpoint checkpoint_" in stopped.stdout
        assert ps() == [] and not socket_path(run_dir).exists()
        listed = redline("attach")
        assert listed.returncode == 2 and "no running engine" in listed.stderr
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.mark.slow
def test_stale_socket_of_a_killed_engine_is_cleaned(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    run_dir = tmp_path / "run"
    started = redline("run", "--detach", "--model", str(tiny_model_dir), "--experiment", "none",
                      "--run-dir", str(run_dir), "--device", "cpu")
    assert started.returncode == 0, started.stderr
    pid = int(next(line for line in started.stdout.splitlines() if line.startswith("pid:")).split()[1])
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), "the engine to die")
    assert socket_path(run_dir).exists()  # left behind by SIGKILL
    assert ps() == [] and not socket_path(run_dir).exists()
    restarted = redline("run", "--detach", "--model", str(tiny_model_dir), "--experiment", "none",
                        "--run-dir", str(run_dir), "--device", "cpu")
    assert restarted.returncode == 0, restarted.stderr
    assert redline("stop", str(run_dir)).returncode == 0


def test_attach_ps_stop_without_an_engine(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    from console.cli import main

    assert main(["attach", "--socket", str(tmp_path / "forwarded.sock")]) == 2
    assert "cannot connect" in capsys.readouterr().err
    assert main(["stop"]) == 2
    assert "no running engine" in capsys.readouterr().err
    assert main(["ps"]) == 0
    assert "no running engines" in capsys.readouterr().out


def test_ctrl_c_while_waiting_for_the_new_engine_stops_it(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    monkeypatch.setenv(SERVE_DELAY_VARIABLE, "300")  # the engine takes its time to answer
    run_dir = tmp_path / "run"
    child = spawn("--model", str(tiny_model_dir), "--experiment", "none", "--run-dir", str(run_dir), "--device", "cpu")
    child.expect(r"starting the engine \(pid (\d+)")
    pid = int(child.match.group(1))
    try:
        wait_for(lambda: "before serving" in (run_dir / "engine.log").read_text(), "the engine to wait")
        child.sendintr()  # Ctrl+C on the terminal: only redline gets it (the engine has its own session)
        child.expect(f"the engine it started \\(pid {pid}\\) stopped safely")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 130
        assert not pid_alive(pid) and ps() == [] and not socket_path(run_dir).exists()
        assert "stopped before the engine started" in (run_dir / "engine.log").read_text()
    finally:
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_plain_redline_detaches_on_ssh_drop_and_stops_on_q_y(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    child = spawn("--model", str(tiny_model_dir), "--experiment", str(experiment), "--run-dir", str(run_dir),
                  "--device", "cpu", size=(48, 160))
    pid = None
    try:
        child.expect("RUNNING")
        [engine] = ps()
        pid = engine["pid"]
        assert pid != child.pid and engine["consoles"] == 1  # the engine is its own process
        child.send("s")
        child.expect("Purpose")
        child.send("\r")  # Enter accepts the default purpose
        child.expect("Manual checkpoint")
        os.close(child.child_fd)  # the SSH connection drops: the console detaches
        child.child_fd = -1
        assert wait_exit(child) == 129
        step = wait_for(lambda: ps()[0]["consoles"] == 0 and ps()[0]["step"], "the console to leave")
        wait_for(lambda: ps()[0]["step"] > step + 3, "the engine to keep stepping")

        again = spawn("attach", str(run_dir), size=(48, 160))
        expect_all(again, "While you were away", "Baseline checkpoint", "baseline")  # the summary; alerts and table from before
        again.send("q")
        again.expect("Stop engine")
        again.send("y")  # stop the engine safely, then quit
        again.expect(pexpect.EOF)
        again.close()
        assert again.exitstatus == 0
        wait_for(lambda: not pid_alive(pid), "the engine to end")
        assert ps() == []
        manifests = "".join(p.read_text() for p in (run_dir / "checkpoints" / "manifests").iterdir())
        assert "Final checkpoint at shutdown" in manifests
    finally:
        if pid is not None and pid_alive(pid):
            os.kill(pid, signal.SIGKILL)
