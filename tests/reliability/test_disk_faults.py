"""The file system says no: disk full (real ENOSPC), read-only run directory, permission denied.

Disk full and read-only use a real tmpfs mounted for the test (needs root, as in the CI
container); where mounting is impossible, disk full falls back to RLIMIT_FSIZE in a child
process (SIGXFSZ ignored, so writes fail with EFBIG) and the read-only test is skipped.
Permission denied runs a child that drops to the `nobody` user (root bypasses file modes).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import torch

from engine.checkpointing import CheckpointError, CheckpointManager
from engine.memory import MemorySystem
from tests.conftest import make_tiny_qwen2
from tests.reliability.helpers import changed, fingerprint, lost_checkpoints

ROOT = Path(__file__).resolve().parents[2]


@contextlib.contextmanager
def tmpfs(path: Path, size: str):
    """Mount a tmpfs of `size` at `path`; yields a function that remounts it read-only."""
    path.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                             capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        yield lambda: subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def unreferenced_blobs(directory: Path) -> int:
    named = set()
    for manifest in (directory / "manifests").glob("*.json"):
        named |= {t["hash"] for t in json.loads(manifest.read_text())["body"]["tensors"]}
    return sum(1 for b in (directory / "blobs").rglob("*.safetensors") if b.stem not in named)


def can_mount() -> bool:
    if os.geteuid() != 0:
        return False
    probe = Path(tempfile.mkdtemp())
    ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(probe)], capture_output=True).returncode == 0
    if ok:
        subprocess.run(["umount", str(probe)], check=False)
    probe.rmdir()
    return ok


@pytest.mark.skipif(not can_mount(), reason="no tmpfs: see test_file_size_limit_during_save")
def test_disk_full_during_saves(tmp_path, ledger):
    with tmpfs(tmp_path / "fs", "640k"):
        directory = tmp_path / "fs" / "checkpoints"
        model = make_tiny_qwen2(seed=2)
        cm = CheckpointManager(model, directory)
        saved: dict[str, dict] = {}
        failures = 0
        for step in range(40):
            with torch.no_grad():
                for p in model.parameters():
                    p.mul_(1.01)
            before = fingerprint(model)
            listed = [c["id"] for c in cm.list_checkpoints()]
            try:
                saved[cm.save_checkpoint({"step": step})] = before
                continue
            except CheckpointError as exc:
                message = str(exc)
            failures += 1
            clear = "disk is full" in message and "nothing was committed" in message
            nothing_partial = (not any((directory / "tmp").iterdir()) and unreferenced_blobs(directory) == 0
                               and [c["id"] for c in cm.list_checkpoints()] == listed
                               and cm.damaged_checkpoints() == [])
            lost = changed(before, model)
            lost += len(lost_checkpoints(lambda: CheckpointManager(make_tiny_qwen2(seed=4), directory), saved))
            ledger.fault("disk full (ENOSPC on tmpfs) during a checkpoint save",
                         detected=clear and nothing_partial, lost=lost)
            oldest = cm.list_checkpoints()[0]["id"]  # the operator frees space as the message says
            cm.delete_checkpoint(oldest)
            del saved[oldest]
            with torch.no_grad():  # back to the state that failed: the retry must now fit
                for p in model.parameters():
                    p.div_(1.01)
        assert failures >= 3 and len(saved) >= 2


CHILD_FSIZE = """
import json, resource, signal, sys, torch
from engine.checkpointing import CheckpointError, CheckpointManager
from tests.conftest import make_tiny_qwen2
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
model = make_tiny_qwen2(seed=2)
cm = CheckpointManager(model, sys.argv[1])
first = cm.save_checkpoint({"step": 0})
resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, 20_000))
with torch.no_grad():
    model.model.embed_tokens.weight.mul_(2.0)  # 38 kB tensor file: over the limit
try:
    cm.save_checkpoint({"step": 1})
    print(json.dumps({"error": None, "first": first}))
except (CheckpointError, OSError) as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "first": first}))
"""


@pytest.mark.slow
def test_file_size_limit_during_save(tmp_path, ledger):
    """RLIMIT_FSIZE: the fallback for machines that cannot mount a small file system."""
    directory = tmp_path / "checkpoints"
    out = subprocess.run([sys.executable, "-c", CHILD_FSIZE, str(directory)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    cm = CheckpointManager(make_tiny_qwen2(seed=2), directory)
    nothing_partial = [c["id"] for c in cm.list_checkpoints()] == [result["first"]]
    nothing_partial &= not any((directory / "tmp").iterdir()) and unreferenced_blobs(directory) == 0
    ledger.fault("file too large (RLIMIT_FSIZE, EFBIG) during a checkpoint save",
                 detected=bool(result["error"]) and "File too large" in result["error"] and nothing_partial,
                 lost=len(lost_checkpoints(lambda: cm, {result["first"]: fingerprint(make_tiny_qwen2(seed=2))})))


@pytest.mark.skipif(not can_mount(), reason="no tmpfs to remount read-only")
def test_read_only_run_directory(tmp_path, ledger):
    with tmpfs(tmp_path / "fs", "4m") as make_read_only:
        directory = tmp_path / "fs" / "checkpoints"
        model = make_tiny_qwen2(seed=2)
        writer = CheckpointManager(model, directory)
        saved = {writer.save_checkpoint({"step": 0}): fingerprint(model)}
        make_read_only()
        reader = CheckpointManager(make_tiny_qwen2(seed=8), directory)  # opening must still work
        listed = [c["id"] for c in reader.list_checkpoints()] == list(saved)
        ledger.fault("read-only run directory: open, list and restore checkpoints", detected=listed,
                     lost=len(lost_checkpoints(lambda: reader, saved)))
        with torch.no_grad():
            model.model.norm.weight.add_(1.0)
        before = fingerprint(model)
        try:
            writer.save_checkpoint({"step": 1})
            refused = False
        except CheckpointError as exc:
            refused = "Read-only file system" in str(exc) and "nothing was changed" in str(exc)
        ledger.fault("read-only run directory: save", detected=refused, lost=changed(before, model))
        try:
            writer.delete_checkpoint(next(iter(saved)))
            refused = False
        except CheckpointError as exc:
            refused = "Read-only file system" in str(exc)
        ledger.fault("read-only run directory: delete", detected=refused,
                     lost=len(lost_checkpoints(lambda: reader, saved)))


def observation_ids(directory: Path) -> set[int]:
    with MemorySystem(directory) as memory:
        return {o.id for o in memory.observations.query()}


CHILD_NOBODY = """
import json, os, sys
from engine.checkpointing import CheckpointError, CheckpointManager
from engine.memory import MemorySystem, MemoryStoreError
from tests.conftest import make_tiny_qwen2
model = make_tiny_qwen2()  # everything imported first: root's home (the interpreter) is 0700
uid = int(sys.argv[2])
os.setgroups([]); os.setgid(uid); os.setuid(uid)
out = {}
for what, call in {
    "checkpoints": lambda: CheckpointManager(model, sys.argv[1] + "/checkpoints").save_checkpoint(),
    "memory": lambda: MemorySystem(sys.argv[1] + "/memory").record_observation("x"),
}.items():
    try:
        call()
        out[what] = None
    except (CheckpointError, MemoryStoreError, OSError) as exc:
        out[what] = f"{type(exc).__name__}: {exc}"
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0, reason="dropping to `nobody` needs root")
def test_permission_denied_for_another_user(tmp_path, ledger):
    """A run directory owned by someone else (0700): refused with a message naming the path."""
    nobody = pwd.getpwnam("nobody").pw_uid
    base = Path(tempfile.mkdtemp(prefix="redline-perm-"))
    os.chmod(base, 0o755)
    run_dir = base / "run"
    model = make_tiny_qwen2(seed=2)
    cm = CheckpointManager(model, run_dir / "checkpoints")
    saved = {cm.save_checkpoint({"owner": "root"}): fingerprint(model)}
    with MemorySystem(run_dir / "memory") as memory:
        memory.record_observation("the owner's note", category="note")
    owned = observation_ids(run_dir / "memory")
    os.chmod(run_dir, 0o755)  # the child can reach the directories, not write into them
    try:
        out = subprocess.run([sys.executable, "-c", CHILD_NOBODY, str(run_dir), str(nobody)], cwd=ROOT,
                             capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert out.returncode == 0, out.stderr
        result = json.loads(out.stdout.strip().splitlines()[-1])
        lost = {
            "checkpoints": len(lost_checkpoints(lambda: CheckpointManager(make_tiny_qwen2(seed=3), run_dir / "checkpoints"),
                                                saved)),
            "memory": len(owned - observation_ids(run_dir / "memory")),
        }
        for what, error in result.items():
            ledger.fault(f"permission denied: {what} (the owner's records intact)",
                         detected=bool(error) and "ermission denied" in error and str(run_dir) in error,
                         lost=lost[what])
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)
