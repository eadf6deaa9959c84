"""The terminal vanishes (SIGHUP) while `redline` runs an experiment in a real pseudo-terminal.

Documented behaviour (`redline --help`): the console exits 129 and the engine, its own process,
keeps running; `redline stop` later stops it safely with a final checkpoint. Checked on disk
afterwards: the final checkpoint exists, verifies, and holds the experiment's changes.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from engine.checkpointing import CheckpointManager
from engine.runtime.registry import pid_alive
from tests.console.test_attach_cli import ps, redline, wait_for
from tests.console.test_cli_pty import spawn, wait_exit
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

GROWING = """
    import torch

    def run(ctx):
        while True:
            with torch.no_grad():
                ctx.model.model.layers[0].mlp.down_proj.weight.mul_(1.001)
            ctx.step("grow")
            ctx.wait(0.02)
"""


def test_sighup_during_an_experiment_detaches_with_129_and_loses_nothing(tiny_model_dir, tmp_path, ledger,  # noqa: F811
                                                                         monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "xdg"))
    (tmp_path / "xdg").mkdir(mode=0o700)
    run_dir = tmp_path / "run"
    experiment = write_experiment(tmp_path, GROWING)
    child = spawn("--model", str(tiny_model_dir), "--experiment", str(experiment), "--run-dir", str(run_dir),
                  "--device", "cpu", size=(48, 160))
    child.expect("RUNNING")
    child.expect("grow")
    os.close(child.child_fd)  # the SSH connection drops: the tty hangs up, SIGHUP goes to the session
    child.child_fd = -1
    code = wait_exit(child)
    [engine] = ps()
    try:
        step = engine["step"]
        kept_running = bool(wait_for(lambda: ps()[0]["step"] > step + 3, "the engine to keep stepping"))
        stopped = redline("stop", str(run_dir))
        wait_for(lambda: not pid_alive(engine["pid"]), "the engine to end")
    finally:
        if pid_alive(engine["pid"]):
            os.kill(engine["pid"], signal.SIGKILL)

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    start = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    cm = CheckpointManager(model, run_dir / "checkpoints", memory_snapshot=False)
    listed = cm.list_checkpoints()
    finals = [c for c in listed if (c["metadata"] or {}).get("state") in ("shutdown", "forensic", "stopped")]
    damaged = len(cm.damaged_checkpoints()) + sum(not cm.verify_checkpoint(c["id"]) for c in listed)
    kept = bool(finals) and cm.restore_checkpoint(finals[-1]["id"])
    kept = kept and not torch.equal(model.model.layers[0].mlp.down_proj.weight, start)
    ledger.fault("SIGHUP to redline in a pseudo-terminal during an experiment",
                 detected=code == 129 and kept_running and stopped.returncode == 0 and kept, lost=damaged)
    assert code == 129
