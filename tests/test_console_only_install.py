"""The console without torch: `pip install redline` (no `[engine]` extra) watches an engine over its socket.

The end-to-end test builds a real venv with no torch, installs the project's wheel there from the
package index (pip's cache makes repeats cheap), and drives its `redline ps`, `attach --socket` and
`stop` against an engine started from the suite's own environment. The cheap tests keep the pieces
honest: the engine's floors agree with pyproject.toml, every console module imports with the engine's
packages absent, and the messages name what to install.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tomllib
from importlib.metadata import PackageNotFoundError
from pathlib import Path

import pexpect
import pytest

from engine.requirements_check import ENGINE_FLOORS, EngineRequirementsError, at_least, describe, problems
from engine.runtime.engine import Engine, EngineConfig
from engine.runtime.socket_paths import socket_path
from tests.console.test_attach_cli import redline, wait_for
from tests.console.test_cli_pty import DEADLINE
from tests.engine_harness import KEEP_CHANGING, tiny_model_dir, write_experiment  # noqa: F401  (fixture)

ROOT = Path(__file__).resolve().parents[1]
ENGINE_PACKAGES = tuple(ENGINE_FLOORS)  # what the engine extra adds; checked against pyproject.toml below


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]


def test_the_engine_floors_are_the_engine_extra_and_the_base_holds_no_engine_package():
    project = pyproject()
    engine_extra = {}
    for requirement in project["optional-dependencies"]["engine"]:
        name, _, floor = requirement.partition(">=")
        engine_extra[name.strip()] = floor.strip()
    assert engine_extra == ENGINE_FLOORS
    base = {requirement.partition(">=")[0].strip() for requirement in project["dependencies"]}
    assert base.isdisjoint(ENGINE_PACKAGES) and "textual" in base
    pins = subprocess.run([sys.executable, str(ROOT / "scripts" / "floor_constraints.py")], check=True,
                          capture_output=True, text=True).stdout.split()  # what `make test-min` installs
    assert "transformers==4.56" in pins and "textual==" + project_floor(project, "textual") in pins
    assert not [pin for pin in pins if pin.startswith("torch==")]  # the set-up chooses torch
    assert len(pins) == len(project["dependencies"]) + len(ENGINE_FLOORS) - 1


def project_floor(project: dict, name: str) -> str:
    """The `>=` bound of a base dependency: 'textual>=8.0,<9' -> '8.0'."""
    requirement = next(r for r in project["dependencies"] if r.partition(">=")[0].strip() == name)
    return requirement.partition(">=")[2].split(",")[0]


def test_every_console_module_imports_without_the_engine_packages(tmp_path):
    """What `pip install redline` lacks is made unimportable; every console module must still import."""
    probe = (
        "import importlib, pkgutil, sys\n"
        f"for name in {ENGINE_PACKAGES!r}: sys.modules[name] = None\n"
        "import console\n"
        "for module in pkgutil.walk_packages(console.__path__, 'console.'):\n"
        "    importlib.import_module(module.name)\n"
        "from console.cli import main\n"
        "sys.exit(main(['ps', '--json']))\n"
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == []


def test_versions_are_compared_by_release_and_the_messages_name_the_fix():
    assert at_least("2.13.0+cpu", "2.4") and at_least("4.56", "4.56.0") and at_least("0.4.10", "0.4.3")
    assert not at_least("2.3.1", "2.4") and not at_least("4.45.2", "4.56") and not at_least("0.4.2", "0.4.3")
    old_system = {"torch": "2.1.2+cu121", "transformers": "4.45.2"}
    message = describe(*problems(ENGINE_FLOORS, installed=lambda name: old_system.get(name, "999")))
    assert "torch 2.1.2+cu121 is older than 2.4" in message
    assert "transformers 4.45.2 is older than 4.56" in message and "'transformers>=4.56'" in message

    def absent(name):
        raise PackageNotFoundError(name)

    message = describe(*problems(ENGINE_FLOORS, installed=absent, found=lambda name: False))
    assert "console-only install" in message and "pip install 'redline[engine]'" in message
    message = describe(*problems(ENGINE_FLOORS, installed=lambda n: absent(n) if n == "accelerate" else "999",
                                 found=lambda name: False))
    assert message.startswith("the engine cannot start: missing: accelerate")
    assert describe(*problems(ENGINE_FLOORS, installed=absent, found=lambda name: True)) is None  # source builds
    assert describe(*problems(ENGINE_FLOORS)) is None  # this environment runs the engine


def test_an_engine_refuses_to_start_on_an_old_torch(monkeypatch):
    import engine.requirements_check as check

    monkeypatch.setattr(check, "engine_problem", lambda: "the engine cannot start: torch 2.1.0 is older than 2.4")
    engine = Engine(EngineConfig(model="demo"))
    with pytest.raises(EngineRequirementsError, match="torch 2.1.0 is older than 2.4"):
        engine.start()
    assert not engine.is_alive()


def outside_env() -> dict[str, str]:
    """The environment without the suite's PYTHONPATH: the new venv must see only what it installed."""
    return {k: v for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "VIRTUAL_ENV", "NO_COLOR", "COLORTERM", "TEXTUAL_COLOR_SYSTEM")}


def console_only_venv(tmp_path: Path) -> Path:
    """A venv with the project installed from its wheel, without the engine extra; returns its bin folder."""
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("engine", "console"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path / "wheel"),
                    str(source)], cwd=source, check=True, capture_output=True, timeout=300)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    [wheel] = (tmp_path / "wheel").glob("redline-*.whl")
    install = subprocess.run([*pip, "--python", str(venv / "bin" / "python"), "install", "-q", str(wheel)],
                             env=outside_env(), capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout + install.stderr
    return venv / "bin"


@pytest.mark.slow
def test_attach_from_a_venv_without_torch(tmp_path, tiny_model_dir, monkeypatch):
    runtime_dir = tmp_path / "xdg"
    runtime_dir.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime_dir))
    bin_dir = console_only_venv(tmp_path)
    env = outside_env()
    env.update(TERM="screen-256color", TZ="UTC", PATH=f"{bin_dir}:{env.get('PATH', '')}")

    def laptop(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(bin_dir / "redline"), *args], cwd=tmp_path, env=env, capture_output=True,
                              text=True, timeout=120)

    no_torch = subprocess.run([str(bin_dir / "python"), "-c", "import torch"], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
    assert no_torch.returncode == 1 and "No module named 'torch'" in no_torch.stderr
    plain = laptop()
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert "console-only install" in plain.stderr and "pip install 'redline[engine]'" in plain.stderr

    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, KEEP_CHANGING)
    started = redline("run", "--detach", "--model", str(tiny_model_dir), "--experiment", str(experiment),
                      "--run-dir", str(run_dir), "--device", "cpu")
    assert started.returncode == 0, started.stderr
    pid = int(next(line for line in started.stdout.splitlines() if line.startswith("pid:")).split()[1])
    try:
        def engines() -> list[dict]:
            listed = laptop("ps", "--json")
            assert listed.returncode == 0, listed.stderr
            return json.loads(listed.stdout)

        [engine] = wait_for(lambda: [e for e in engines() if e["state"] == "running"], "the experiment to run")
        assert engine["pid"] == pid and engine["run_dir"] == str(run_dir)

        console = pexpect.spawn(str(bin_dir / "redline"), ["attach", "--socket", str(socket_path(run_dir))],
                                cwd=str(tmp_path), env=env, dimensions=(48, 160), encoding="utf-8",
                                codec_errors="replace", timeout=DEADLINE)
        console.expect("RUNNING")
        console.expect("Baseline checkpoint")  # the engine's alert, sent over the socket
        console.send("q")
        if console.expect([pexpect.EOF, "[Dd]etach"]) == 1:  # quit may ask: stop the engine, or detach
            console.send("d")
            console.expect(pexpect.EOF)
        console.close()
        assert console.exitstatus == 0
        assert engines()[0]["state"] == "running"  # detached: the engine goes on

        stopped = laptop("stop", str(run_dir))
        assert stopped.returncode == 0, stopped.stderr
        assert engines() == []
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
