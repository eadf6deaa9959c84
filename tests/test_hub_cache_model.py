"""`--model ORG/NAME` from the local Hugging Face cache: the console and headless mode, found or not.

The cache is real on-disk layout (models--ORG--NAME/snapshots/<hash>, refs/main)
in a temporary HF_HUB_CACHE, holding a tiny Qwen2 and the byte tokenizer;
nothing is downloaded (the tests run with HF_HUB_OFFLINE=1).
"""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pexpect
import pytest

from engine.runtime.headless import EXIT_BAD_INPUT, EXIT_OK
from engine.runtime.headless import main as headless_main
from tests.console.test_cli_pty import COMMAND, ROOT, spawn
from tests.conftest import make_tiny_qwen2
from tests.test_model_manager import put_in_hub_cache

HUB_ID = "tiny-org/tiny-qwen"
UNKNOWN = "nobody/no-such-model"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """HF_HUB_CACHE pointing at a cache that holds HUB_ID (inherited by the processes a test starts)."""
    cache = tmp_path / "hf-hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    put_in_hub_cache(cache, HUB_ID, make_tiny_qwen2(seed=7))
    return cache


def headless(*args: str) -> tuple[int, list[dict]]:
    out = io.StringIO()
    code = headless_main(["--headless", "--device", "cpu", "--experiment", "none", *args], out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


@pytest.mark.slow
def test_console_in_a_pty_loads_a_cached_hub_id_then_quits(hub_cache, tmp_path):
    run_dir = tmp_path / "run"
    child = spawn("--model", HUB_ID, "--experiment", "none", "--run-dir", str(run_dir), size=(48, 160))
    child.expect("IDLE")  # the engine reached idle: the model is loaded and the baseline taken
    child.expect(HUB_ID)
    child.send("q")
    child.expect("Stop engine")  # the engine is its own process: q asks whether to stop it or detach
    child.send("y")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    manifests = "".join(p.read_text() for p in (run_dir / "checkpoints" / "manifests").iterdir())
    assert "Baseline at engine start" in manifests and HUB_ID in manifests


def test_console_refuses_an_uncached_hub_id_without_importing_torch(hub_cache):
    code = (
        "import sys\n"
        "from console.cli import main\n"
        "from engine.model_source import locate_model_dir\n"
        f"print(locate_model_dir({HUB_ID!r}))\n"
        f"print(main(['--model', {UNKNOWN!r}, '--experiment', 'none']))\n"
        "print(sorted(m for m in ('torch', 'transformers', 'safetensors') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    snapshot, exit_code, heavy = done.stdout.splitlines()
    assert snapshot.startswith(str(hub_cache / "models--tiny-org--tiny-qwen" / "snapshots"))
    assert (exit_code, heavy) == ("2", "[]")
    assert str(hub_cache) in done.stderr and "models--nobody--no-such-model" in done.stderr
    assert "never downloads" in done.stderr
    run = subprocess.run([*COMMAND, "--model", UNKNOWN], cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 2 and str(hub_cache) in run.stderr


def test_console_refuses_a_missing_tokenizer_directory(hub_cache, tmp_path):
    usage = subprocess.run([*COMMAND, "--help"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert "--tokenizer PATH" in usage and "ORG/NAME" in usage
    run = subprocess.run([*COMMAND, "--model", HUB_ID, "--tokenizer", str(tmp_path / "no-tok")], cwd=ROOT,
                         capture_output=True, text=True)
    assert run.returncode == 2 and "tokenizer directory" in run.stderr and "no-tok" in run.stderr


@pytest.mark.slow
def test_headless_loads_a_cached_hub_id(hub_cache, tmp_path):
    code, events = headless("--model", HUB_ID, "--run-dir", str(tmp_path / "run"))
    assert code == EXIT_OK
    states = [e for e in events if e["event"] == "state"]
    assert any(e["state"] == "idle" and e["model"] == HUB_ID for e in states)
    assert not any(e["event"] == "alert" and e["severity"] == "CRITICAL" for e in events)


def test_headless_refuses_an_uncached_hub_id_with_exit_2(hub_cache, tmp_path):
    code, events = headless("--model", UNKNOWN, "--run-dir", str(tmp_path / "run"))
    assert code == EXIT_BAD_INPUT
    alerts = [e["message"] for e in events if e["event"] == "alert" and e["severity"] == "CRITICAL"]
    assert any(str(hub_cache) in message and "models--nobody--no-such-model" in message for message in alerts)
