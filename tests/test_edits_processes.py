"""engine.edits across real processes: the journal outlives its process, one owner at a time,
and a process killed (SIGKILL) in the middle of an edit leaves no trace of it."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest
import torch

from engine.edits import EditJournal, JournalBusy
from engine.edits.owner import owner_pid
from tests.conftest import make_tiny_qwen2
from tests.test_edits import assert_state, down_proj, snapshot

_CHILD = textwrap.dedent("""
    import sys, time, torch
    from engine.edits import EditJournal
    from tests.conftest import make_tiny_qwen2
    run_dir, mode, state_file = sys.argv[1], sys.argv[2], sys.argv[3]
    model = make_tiny_qwen2(tied=True, layers=4)
    journal = EditJournal(model, run_dir)
    g = torch.Generator().manual_seed(7)
    def edit(layer):
        w = model.model.layers[layer].mlp.down_proj.weight
        with torch.no_grad():
            w.add_(torch.outer(torch.randn(w.shape[0], generator=g), torch.randn(w.shape[1], generator=g)) * 1e-3)
    for layer in (0, 1, 0):
        with journal.edit(f"layer {layer}", layer=layer):
            edit(layer)
    torch.save(model.state_dict(), state_file)
    if mode == "hang":
        journal.flush()  # the committed edits' pre-edit blobs are on disk
        with journal.edit("never finished"):
            edit(2)
            with torch.no_grad():
                model.model.layers[3].mlp.down_proj.weight.mul_(2)
            print("inside", flush=True)
            time.sleep(600)
    if mode.startswith("crash:"):  # the writer SIGKILLed at a named point of this edit (engine/edits/pending.py)
        import os
        from engine.edits.content import CRASH_ENV
        journal.flush()
        os.environ[CRASH_ENV] = mode.removeprefix("crash:")
        with journal.edit("killed while committing"):
            with torch.no_grad():
                model.model.layers[2].mlp.down_proj.weight.mul_(1.01)
        journal.flush()  # the edit returned before it was written; the writer dies on the way
        print("survived", flush=True)
    if mode == "hold":
        print("holding", flush=True)
        time.sleep(600)
    journal.close()
""")


def _child(tmp_path, mode: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path / "run"), mode, str(tmp_path / "state.pt")],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()),
    )


def _model_from(state_file):
    model = make_tiny_qwen2(tied=True, layers=4)
    model.load_state_dict(torch.load(state_file))
    return model


def test_journal_across_processes_reverts_from_blobs(tmp_path):
    original = snapshot(make_tiny_qwen2(tied=True, layers=4))
    child = _child(tmp_path, "exit")
    assert child.wait(timeout=120) == 0
    model = _model_from(tmp_path / "state.pt")
    with EditJournal(model, tmp_path / "run") as journal:
        records = journal.list()
        assert [(r.description, r.outcome) for r in records] == [
            ("layer 0", "committed"), ("layer 1", "committed"), ("layer 0", "committed")]
        assert records[0].meta == {"layer": 0}
        assert journal._content._held == {}  # nothing held in this process: reverts read blobs
        reverts = journal.revert(records[0].id, cascade=True)
        assert [journal.show(r).reverts for r in reverts] == [3, 1]
        journal.revert(records[1].id)
        assert_state(model, original)
    with EditJournal(model, tmp_path / "run") as journal:
        assert [r.kind for r in journal.list()] == ["edit"] * 3 + ["revert"] * 3


def test_one_owner_at_a_time(tmp_path):
    child = _child(tmp_path, "hold")
    try:
        assert child.stdout.readline().strip() == "holding"
        assert owner_pid(tmp_path / "run" / "edits") == child.pid
        with pytest.raises(JournalBusy):
            EditJournal(make_tiny_qwen2(tied=True, layers=4), tmp_path / "run")
    finally:
        child.kill()
        child.wait()
    assert owner_pid(tmp_path / "run" / "edits") is None
    EditJournal(make_tiny_qwen2(tied=True, layers=4), tmp_path / "run").close()


def test_sigkill_in_the_middle_of_an_edit_leaves_no_trace(tmp_path):
    child = _child(tmp_path, "hang")
    try:
        assert child.stdout.readline().strip() == "inside"
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.wait()
    edits_dir = tmp_path / "run" / "edits"
    with sqlite3.connect(edits_dir / "journal.sqlite3") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    model = _model_from(tmp_path / "state.pt")
    state = snapshot(model)
    with EditJournal(model, tmp_path / "run") as journal:
        records = journal.list()
        assert [r.description for r in records] == ["layer 0", "layer 1", "layer 0"]
        assert all(r.outcome == "committed" for r in records)
        needed = {t.hash_before for r in records for t in r.tensors}
        blobs = {p.name.removesuffix(".safetensors") for p in (edits_dir / "blobs").rglob("*.safetensors")}
        assert blobs == needed
        assert not any((edits_dir / "tmp").iterdir())
        journal.revert(records[2].id)
        journal.revert(records[1].id)
        journal.revert(records[0].id)
    assert not all(torch.equal(p, state[n]) for n, p in model.named_parameters(remove_duplicate=False))
    assert_state(model, snapshot(make_tiny_qwen2(tied=True, layers=4)))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["queued", "pre_edit_durable", "committed"])
def test_sigkill_in_the_commit_window_leaves_a_consistent_journal(tmp_path, point):
    """Write-ahead, with the writer thread: killed while the decided edit waits for the writer,
    or after its pre-edit blob is durable but before the row, the edit is absent (its blob is
    collected); killed right after the row, the edit reverts from its blob."""
    child = _child(tmp_path, f"crash:{point}")
    out, _ = child.communicate(timeout=120)
    assert child.returncode == -signal.SIGKILL and "survived" not in out
    edits_dir = tmp_path / "run" / "edits"
    model = _model_from(tmp_path / "state.pt")  # after the three edits, before the killed one
    state = snapshot(model)
    with EditJournal(model, tmp_path / "run") as journal:
        records = journal.list()
        blobs = {p.name.removesuffix(".safetensors") for p in (edits_dir / "blobs").rglob("*.safetensors")}
        assert blobs == {t.hash_before for r in records for t in r.tensors}
        if point != "committed":
            assert [r.description for r in records] == ["layer 0", "layer 1", "layer 0"]
            return
        assert [r.description for r in records][-1] == "killed while committing"
        with torch.no_grad():  # the model of the killed process: the same edit, made again
            model.model.layers[2].mlp.down_proj.weight.mul_(1.01)
        journal.revert(records[-1].id)
    assert_state(model, state)
