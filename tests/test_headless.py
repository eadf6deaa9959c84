"""`redline run --headless` end to end in a subprocess: JSON lines, exit codes, signals."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.runtime.headless import build_parser
from engine.runtime.headless import main as headless_main
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401

REPO = Path(__file__).resolve().parents[1]

LOOP = """
    def run(ctx):
        while True:
            ctx.step("tick")
            ctx.wait(0.02)
"""


def _headless(*args: str, env_extra: dict | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    return subprocess.Popen([sys.executable, "-m", "engine.runtime.headless", "--headless", *args], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _finish(proc: subprocess.Popen, timeout: float = 180) -> tuple[int, list[dict], str]:
    out, err = proc.communicate(timeout=timeout)
    events = [json.loads(line) for line in out.splitlines() if line.strip()]
    return proc.returncode, events, err


def _in_process(*args: str) -> tuple[int, list[dict]]:
    """headless.main in this process (same code path, without paying for a new interpreter)."""
    out = io.StringIO()
    code = headless_main(["--headless", *args], out=out)
    return code, [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]


def _common(model_dir: Path, run_dir: Path) -> list[str]:
    return ["--model", str(model_dir), "--run-dir", str(run_dir), "--device", "cpu"]


def test_help_documents_exit_codes():
    text = build_parser().format_help()
    for code in ("0", "1", "2", "3", "4"):
        assert f"  {code}  " in text
    assert "SIGTERM" in text


def test_finished_experiment_exits_0_with_json_lines(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP)
    code, events = _in_process(*_common(tiny_model_dir, tmp_path / "run"), "--experiment", str(experiment),
                               "--max-steps", "3")
    assert code == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "state" and events[0]["state"] == "starting"
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2, 3]
    assert "checkpoints" in kinds and "health" in kinds
    finals = [e for e in events if e["event"] == "checkpoint_saved" and e["checkpoint"]["state"] == "shutdown"]
    assert len(finals) == 1
    assert events[-1]["event"] == "state" and events[-1]["state"] == "stopped"


@pytest.mark.slow
def test_sigterm_stops_checkpoints_and_exits_0(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, LOOP)
    proc = _headless(*_common(tiny_model_dir, tmp_path / "run"), "--experiment", str(experiment))
    seen = []
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        seen.append(json.loads(line))
        if seen[-1]["event"] == "step" and seen[-1]["step"] >= 3:
            break
    assert seen and seen[-1]["event"] == "step", "the experiment never ran"
    proc.send_signal(signal.SIGTERM)
    code, events, err = _finish(proc)
    events = seen + events
    assert code == 0, err
    finals = [e for e in events if e["event"] == "checkpoint_saved" and e["checkpoint"]["state"] == "shutdown"]
    assert len(finals) == 1
    assert any(e["event"] == "alert" and "stopped for shutdown" in e["message"] for e in events)
    assert events[-1]["state"] == "stopped"


def test_bad_input_exits_2(tiny_model_dir, tmp_path):
    broken = write_experiment(tmp_path, "def run(ctx)\n    pass\n")
    code, events = _in_process(*_common(tiny_model_dir, tmp_path / "run"), "--experiment", str(broken))
    assert code == 2
    assert any(e["event"] == "alert" and f"{broken}:1" in e["message"] for e in events)
    code, events = _in_process(*_common(tmp_path / "missing-model", tmp_path / "run2"))
    assert code == 2
    assert any(e["event"] == "alert" and e["severity"] == "CRITICAL" for e in events)


def test_automatic_rollback_exits_1(tiny_model_dir, tmp_path):
    experiment = write_experiment(tmp_path, """
        import torch

        def run(ctx):
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
            ctx.step("nan")
    """)
    code, events = _in_process(*_common(tiny_model_dir, tmp_path / "run"), "--experiment", str(experiment))
    assert code == 1
    assert any(e["event"] == "checkpoint_restored" and e["ok"] for e in events)


@pytest.mark.slow
def test_unrecovered_critical_exits_3(tiny_model_dir, tmp_path):
    model_copy = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_copy)
    experiment = write_experiment(tmp_path, f"""
        import torch
        from pathlib import Path

        def run(ctx):
            ctx.checkpoints.release_memory_snapshot()
            for blob in (ctx.checkpoints.checkpoint_dir / "blobs").rglob("*.safetensors"):
                data = bytearray(blob.read_bytes())
                data[-1] ^= 0xFF
                blob.write_bytes(bytes(data))
            for weights in Path({str(model_copy)!r}).glob("*.safetensors"):
                weights.unlink()
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
            ctx.step("nan")
    """)
    code, events = _in_process(*_common(model_copy, tmp_path / "run"), "--experiment", str(experiment))
    assert code == 3
    assert any(e["event"] == "alert" and "manual intervention" in e["message"] for e in events)


def test_a_model_without_tokenizer_is_supervised_with_perplexity_off(tmp_path):
    """No tokenizer at all: the engine still scans, checkpoints and rolls back; perplexity is off and said so."""
    from tests.conftest import make_tiny_qwen2

    make_tiny_qwen2(seed=3).save_pretrained(tmp_path / "no-tok")
    experiment = write_experiment(tmp_path, """
        import torch

        def run(ctx):
            assert ctx.tokenizer is None
            ctx.step("healthy")
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.up_proj.weight[0, 0] = float("nan")
            ctx.step("nan")
    """)
    code, events = _in_process(*_common(tmp_path / "no-tok", tmp_path / "run"), "--experiment", str(experiment))
    assert code == 1
    alerts = [e["message"] for e in events if e["event"] == "alert"]
    assert any(m.startswith("Perplexity is off") for m in alerts), alerts
    assert any("perplexity off" in m and "Baseline checkpoint" in m for m in alerts), alerts
    assert any(e["event"] == "checkpoint_restored" and e["ok"] for e in events)
    gauges = [g for e in events if e["event"] == "health" for g in e["gauges"] if g["name"] == "ppl"]
    assert gauges and all(g["text"] == "off" and g["note"] == "(no tokenizer)" for g in gauges)
    assert not (tmp_path / "run" / "baseline_metrics.json").exists()
