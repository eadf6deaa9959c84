"""`redline edits ls|show|revert` in real processes, on a real journal and real checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

from engine.checkpointing import CheckpointManager
from engine.edits import EditJournal
from tests.conftest import make_tiny_qwen2
from tests.test_edits import assert_state, down_proj, rank_one, snapshot


def redline(*args: str) -> subprocess.CompletedProcess:
    code = ("import sys; from console.cli import main; rc = main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules or sys.argv[1:3] == ['edits', 'revert']; sys.exit(rc)")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
                          env=dict(os.environ, PYTHONPATH=os.getcwd()))


def test_ls_show_and_revert_in_the_newest_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    model = make_tiny_qwen2(tied=True, layers=2)
    original = snapshot(model)
    g = torch.Generator().manual_seed(0)
    journal = EditJournal(model, run_dir)
    with journal.edit("a", layer=0):
        rank_one(down_proj(model, 0), 0.05, g)
    with journal.edit("b", layer=0):
        rank_one(down_proj(model, 0), 0.05, g)
    with journal.edit("c", layer=1):
        rank_one(down_proj(model, 1), 0.05, g)
    edited = snapshot(model)
    manager = CheckpointManager(model, run_dir / "checkpoints")
    manager.save_checkpoint({"purpose": "after the edits"})

    ls = redline("edits", "ls", "--run-dir", str(run_dir))
    assert ls.returncode == 0, ls.stderr
    lines = ls.stdout.splitlines()
    assert len(lines) == 3 and lines[0].split()[0] == "1" and lines[2].endswith("c")
    show = redline("edits", "show", "2", "--run-dir", str(run_dir))
    assert show.returncode == 0, show.stderr
    shown = json.loads(show.stdout)
    assert shown["description"] == "b" and shown["meta"] == {"layer": 0}
    assert shown["tensors"][0]["name"] == "model.layers.0.mlp.down_proj.weight"

    busy = redline("edits", "revert", "1", "--run-dir", str(run_dir))
    assert busy.returncode == 1 and f"(process {os.getpid()}) holds the model" in busy.stderr
    journal.close()

    refused = redline("edits", "revert", "1", "--run-dir", str(run_dir))
    assert refused.returncode == 1 and "later edit(s) 2" in refused.stderr
    done = redline("edits", "revert", "1", "--cascade", "--run-dir", str(run_dir))
    assert done.returncode == 0, done.stderr
    assert "reverted edit(s) 2, 1" in done.stdout

    newest = max(manager.list_checkpoints(), key=lambda c: c["timestamp"])
    assert newest["metadata"]["reverted_edits"] == [2, 1]
    assert manager.restore_checkpoint(newest["id"])
    name = "model.layers.0.mlp.down_proj.weight"
    assert_state(model, dict(edited, **{name: original[name]}))
    with EditJournal(model, run_dir) as reopened:
        assert [(r.kind, r.reverts) for r in reopened.list()[3:]] == [("revert", 2), ("revert", 1)]

    missing = redline("edits", "show", "99", "--run-dir", str(run_dir))
    assert missing.returncode == 1 and "no edit 99" in missing.stderr
    nothing = redline("edits", "ls", "--run-dir", str(tmp_path / "elsewhere"))
    assert nothing.returncode == 1 and "no edit journal" in nothing.stderr
