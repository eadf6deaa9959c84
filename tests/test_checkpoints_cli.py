"""`redline checkpoints` end to end: real subprocesses on a real run directory saved by a CheckpointManager."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from engine.checkpointing import CheckpointManager
from tests.conftest import make_tiny_qwen2

REPO = Path(__file__).resolve().parents[1]
CHANGED = "model.layers.0.mlp.down_proj.weight"


def redline(*args: str, check_code: int | None = None) -> subprocess.CompletedProcess:
    run = subprocess.run([sys.executable, "-m", "console.cli", "checkpoints", *map(str, args)], cwd=REPO,
                         capture_output=True, text=True, timeout=300)
    if check_code is not None:
        assert run.returncode == check_code, (run.returncode, run.stdout[-2000:], run.stderr[-2000:])
    return run


def as_json(*args: str, code: int = 0) -> dict:
    return json.loads(redline(*args, "--json", check_code=code).stdout)


@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    """A run directory with three checkpoints: the start, down_proj doubled, down_proj doubled again.

    Returns (run_dir, ids, states): states[i] is the model's state_dict at ids[i].
    """
    run_dir = tmp_path_factory.mktemp("cli-run")
    model = make_tiny_qwen2(seed=3)
    cm = CheckpointManager(model, run_dir / "checkpoints")
    ids, states = [], []
    for step in range(3):
        if step:
            with torch.no_grad():
                model.get_submodule(CHANGED.rsplit(".", 1)[0]).weight.mul_(2.0)
        ids.append(cm.save_checkpoint({"purpose": f"step {step}", "state": "manual", "health": "OK"}))
        states.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    return run_dir, ids, states


@pytest.fixture
def run(saved_run, tmp_path):
    """A private copy of the saved run (tests damage and delete things)."""
    run_dir, ids, states = saved_run
    copy = shutil.copytree(run_dir, tmp_path / "run")
    return copy, ids, states


def blob_of(run_dir: Path, checkpoint_id: str, tensor: str) -> Path:
    body = json.loads((run_dir / "checkpoints" / "manifests" / f"{checkpoint_id}.json").read_text())["body"]
    digest = next(t["hash"] for t in body["tensors"] if tensor in [t["name"], *t["aliases"]])
    return run_dir / "checkpoints" / "blobs" / digest[:2] / f"{digest}.safetensors"


def blobs_on_disk(run_dir: Path) -> set[str]:
    return {p.stem for p in (run_dir / "checkpoints" / "blobs").rglob("*.safetensors")}


def referenced(run_dir: Path) -> set[str]:
    names = set()
    for manifest in (run_dir / "checkpoints" / "manifests").glob("*.json"):
        names |= {t["hash"] for t in json.loads(manifest.read_text())["body"]["tensors"]}
    return names


def test_help_documents_subcommands_and_exit_codes():
    text = redline("--help", check_code=0).stdout
    for word in ("ls", "show", "verify", "diff", "export", "gc", "rm", "exit codes", "--run-dir", "--json"):
        assert word in text, word
    assert "--single-file" in redline("export", "--help", check_code=0).stdout
    top = subprocess.run([sys.executable, "-m", "console.cli", "--help"], cwd=REPO, capture_output=True, text=True)
    assert "redline checkpoints" in top.stdout
    probe = "import sys, engine.checkpoints_cli.command_line, console.cli; assert 'torch' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe], cwd=REPO).returncode == 0


def test_ls_and_show(run):
    run_dir, ids, _states = run
    store_dir = run_dir / "checkpoints"
    (store_dir / "lock").unlink()
    shutil.rmtree(store_dir / "tmp")
    before = sorted((str(p), p.stat().st_mtime_ns) for p in store_dir.rglob("*"))
    listed = as_json("ls", "--run-dir", run_dir)
    assert [c["id"] for c in listed["checkpoints"]] == ids
    assert all(c["health"] == "OK" and c["num_tensors"] > 0 for c in listed["checkpoints"])
    assert listed["damaged"] == []
    text = redline("ls", "--run-dir", run_dir, check_code=0).stdout
    assert all(i in text for i in ids) and "step 2" in text

    shown = as_json("show", ids[1], "--run-dir", run_dir)
    assert shown["metadata"]["purpose"] == "step 1" and shown["health"] == "OK"
    changed = next(t for t in shown["tensors"] if t["name"] == CHANGED)
    assert changed["shared_with"] == 0  # doubled once: in no other checkpoint
    assert shown["unique_bytes"] == changed["nbytes"]
    assert {s["id"] for s in shown["shares"]} == {ids[0], ids[2]}
    assert "lm_head.weight" in json.dumps(shown["tensors"])  # the tied alias is named
    assert CHANGED in redline("show", ids[1], "--run-dir", run_dir, check_code=0).stdout
    assert sorted((str(p), p.stat().st_mtime_ns) for p in store_dir.rglob("*")) == before  # readers create nothing


def test_the_run_dir_or_the_checkpoint_dir_itself(run):
    run_dir, ids, _states = run
    assert [c["id"] for c in as_json("ls", "--run-dir", run_dir / "checkpoints")["checkpoints"]] == ids


def test_verify_names_every_damaged_checkpoint_and_tensor(run):
    run_dir, ids, _states = run
    assert as_json("verify", "--run-dir", run_dir)["ok"] is True
    shared = blob_of(run_dir, ids[0], "model.layers.1.mlp.up_proj.weight")  # unchanged: in all three
    data = bytearray(shared.read_bytes())
    data[-5] ^= 0x10
    shared.write_bytes(bytes(data))
    result = redline("verify", "--run-dir", run_dir)
    assert result.returncode == 1
    for checkpoint_id in ids:
        assert f"{checkpoint_id}  DAMAGED" in result.stdout
    assert "model.layers.1.mlp.up_proj.weight" in result.stdout
    report = as_json("verify", ids[2], "--run-dir", run_dir, code=1)
    assert report["damaged"] == [ids[2]]
    assert [d["tensor"] for d in report["checkpoints"][0]["damaged"]] == ["model.layers.1.mlp.up_proj.weight"]


def test_verify_names_a_damaged_manifest(run):
    run_dir, ids, _states = run
    manifest = run_dir / "checkpoints" / "manifests" / f"{ids[1]}.json"
    manifest.write_text(manifest.read_text().replace('"step 1"', '"step 9"'))
    report = as_json("verify", "--run-dir", run_dir, code=1)
    assert report["damaged"] == [ids[1]]
    (damaged,) = [c for c in report["checkpoints"] if c["id"] == ids[1]]
    assert "checksum" in damaged["manifest_error"]


def test_diff_reports_change_magnitudes_largest_first(run):
    run_dir, ids, states = run
    result = as_json("diff", ids[0], ids[2], "--run-dir", run_dir)
    assert result["num_differences"] == 1
    (only,) = result["differences"]
    expected = torch.linalg.vector_norm(states[2][CHANGED].double() - states[0][CHANGED].double()).item()
    assert only["layer"] == CHANGED and only["change"] == pytest.approx(expected)
    assert only["relative"] == pytest.approx(3.0)
    same = as_json("diff", ids[1], ids[1], "--run-dir", run_dir)
    assert same["num_differences"] == 0
    assert "identical" in redline("diff", ids[1], ids[1], "--run-dir", run_dir, check_code=0).stdout


def test_export_loads_with_from_pretrained_with_equal_weights(run, tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    run_dir, ids, states = run
    out = tmp_path / "exported"
    exported = as_json("export", ids[1], out, "--run-dir", run_dir)
    assert Path(exported["path"]) == out and (out / "config.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32, local_files_only=True)
    loaded = model.state_dict()
    assert set(loaded) == set(states[1])
    for name, tensor in states[1].items():
        assert torch.equal(loaded[name], tensor), name
    assert redline("export", ids[1], out, "--run-dir", run_dir).returncode == 2  # not empty: never overwritten

    single = tmp_path / "one.safetensors"
    as_json("export", ids[2], "--single-file", single, "--run-dir", run_dir)
    tensors = load_file(single)
    assert torch.equal(tensors[CHANGED], states[2][CHANGED])


CRASHING_SAVE = """
    import os, sys, torch
    from engine.checkpointing import CheckpointManager
    from tests.conftest import make_tiny_qwen2

    model = make_tiny_qwen2(seed=11)  # other values: every tensor file it writes is new
    cm = CheckpointManager(model, sys.argv[1])
    cm.store.commit = lambda body, new_blobs=(): os._exit(9)  # the process dies before its manifest
    cm.save_checkpoint({"purpose": "never committed"})
"""


def test_gc_is_a_dry_run_then_leaves_exactly_the_referenced_blobs(run, tmp_path):
    run_dir, ids, _states = run
    store = run_dir / "checkpoints"
    script = tmp_path / "crash.py"
    script.write_text(textwrap.dedent(CRASHING_SAVE))
    crashed = subprocess.run([sys.executable, str(script), str(store)], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)})
    assert crashed.returncode == 9
    (store / "tmp" / ".tmp-0123456789abcdef").write_bytes(b"half a tensor")  # a write cut short
    before = blobs_on_disk(run_dir)
    assert before > referenced(run_dir)

    plan = as_json("gc", "--run-dir", run_dir)
    assert plan["dry_run"] and len(plan["leftovers"]) == 1
    assert {Path(b["path"]).stem for b in plan["unreferenced_blobs"]} == before - referenced(run_dir)
    assert blobs_on_disk(run_dir) == before and (store / "tmp" / ".tmp-0123456789abcdef").exists()

    done = as_json("gc", "--yes", "--run-dir", run_dir)
    assert done["freed_bytes"] > 0 and done["removed_leftovers"] == 1
    assert blobs_on_disk(run_dir) == referenced(run_dir)
    assert list((store / "tmp").iterdir()) == []
    assert as_json("verify", "--run-dir", run_dir)["ok"] is True
    assert "nothing to remove" in redline("gc", "--run-dir", run_dir, check_code=0).stdout


def test_rm_deletes_only_what_nothing_else_uses(run):
    run_dir, ids, _states = run
    unique = blob_of(run_dir, ids[1], CHANGED)
    shared = blob_of(run_dir, ids[1], "model.layers.1.mlp.up_proj.weight")
    removed = as_json("rm", ids[1], "--run-dir", run_dir)
    assert removed["removed"][0]["deleted"] and removed["removed"][0]["freed_bytes"] > 0
    assert not unique.exists() and shared.exists()
    assert [c["id"] for c in as_json("ls", "--run-dir", run_dir)["checkpoints"]] == [ids[0], ids[2]]
    assert as_json("verify", "--run-dir", run_dir)["ok"] is True


def test_bad_ids_are_a_clear_error_with_code_2_and_change_nothing(run):
    run_dir, ids, _states = run
    before = sorted(p.name for p in (run_dir / "checkpoints" / "manifests").iterdir())
    unknown = "checkpoint_20200101_000000_deadbeef"
    for args in (("show", "../../etc/passwd"), ("verify", ids[0], "checkpoint_x"), ("diff", ids[0], unknown),
                 ("rm", ids[0], unknown), ("export", unknown, "--single-file", run_dir / "x.safetensors")):
        result = redline(*args, "--run-dir", run_dir)
        assert result.returncode == 2, (args, result.stderr)
        assert str(args[-1]) in result.stderr or unknown in result.stderr
        assert "checkpoints ls" in result.stderr
    error = as_json("show", unknown, "--run-dir", run_dir, code=2)
    assert error["exit_code"] == 2 and unknown in error["error"]
    assert sorted(p.name for p in (run_dir / "checkpoints" / "manifests").iterdir()) == before
    assert not (run_dir / "x.safetensors").exists()


def test_no_store_at_the_run_dir_is_code_2(tmp_path):
    result = redline("ls", "--run-dir", tmp_path / "nothing-here")
    assert result.returncode == 2 and "no checkpoints in" in result.stderr
    assert not (tmp_path / "nothing-here").exists()


SAVING_LOOP = """
    import sys, torch
    from engine.checkpointing import CheckpointManager
    from tests.conftest import make_tiny_qwen2

    model = make_tiny_qwen2(seed=5)
    cm = CheckpointManager(model, sys.argv[1])
    for step in range(int(sys.argv[2])):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01)  # every save writes new tensor files
        cm.save_checkpoint({"purpose": f"concurrent {step}"})
"""


@pytest.mark.slow
def test_gc_and_rm_while_another_process_saves_lose_nothing(run, tmp_path):
    run_dir, ids, _states = run
    script = tmp_path / "saver.py"
    script.write_text(textwrap.dedent(SAVING_LOOP))
    saver = subprocess.Popen([sys.executable, str(script), str(run_dir / "checkpoints"), "15"], cwd=REPO,
                             env={**os.environ, "PYTHONPATH": str(REPO)}, stderr=subprocess.PIPE, text=True)
    rounds = 0
    while saver.poll() is None or rounds < 2:
        redline("gc", "--yes", "--run-dir", run_dir, check_code=0)
        rounds += 1
    assert saver.returncode == 0, saver.stderr.read()[-2000:]
    redline("rm", ids[0], "--run-dir", run_dir, check_code=0)
    listed = as_json("ls", "--run-dir", run_dir)["checkpoints"]
    assert len(listed) == 2 + 15
    assert as_json("verify", "--run-dir", run_dir)["ok"] is True
    assert blobs_on_disk(run_dir) >= referenced(run_dir)


def test_progress_bar_only_on_a_terminal(run):
    import pexpect

    run_dir, ids, _states = run
    child = pexpect.spawn(sys.executable, ["-m", "console.cli", "checkpoints", "verify", "--run-dir", str(run_dir)],
                          cwd=REPO, encoding="utf-8", timeout=120)
    child.expect(r"verifying \[#+\] 100%")
    child.expect("all 3 checkpoints intact")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
    piped = redline("verify", "--run-dir", run_dir, check_code=0)
    assert "verifying [" not in piped.stderr + piped.stdout
