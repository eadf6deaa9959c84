"""`--model` pointing at things that are not a usable model, and experiment files that are broken.

The pickled weights are a real exploit: a protocol-0 pickle whose loading calls
builtins.exec to create a marker file (written byte by byte here: the test suite imports no
pickle module either). The marker never appearing proves nothing unpickled it.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from engine.checkpointing import CheckpointManager
from engine.runtime.headless import EXIT_BAD_INPUT
from engine.runtime.headless import main as headless_main
from engine.model_manager import ModelManager
from tests.conftest import make_tiny_qwen2
from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)


def exploit(marker: Path) -> bytes:
    """Pickle opcodes: GLOBAL builtins.exec, MARK, UNICODE <code>, TUPLE, REDUCE, STOP."""
    code = f"open({str(marker)!r}, 'w').write('unpickled')"
    return b"cbuiltins\nexec\n(V" + code.encode() + b"\ntR."


def model_dirs(base: Path, good: Path, marker: Path) -> dict[str, Path]:
    """name -> a --model argument that must be refused."""
    out = {}
    out["a file (config.json)"] = good / "config.json"
    out["a missing path"] = base / "does-not-exist"
    (empty := base / "empty").mkdir()
    out["an empty directory"] = empty
    only_bin = base / "only-bin"
    shutil.copytree(good, only_bin)
    for f in only_bin.glob("*.safetensors"):
        f.unlink()
    for name in ("pytorch_model.bin", "training_args.bin", "model.pt"):
        (only_bin / name).write_bytes(exploit(marker))
    out["only pickled weights (pytorch_model.bin exploit)"] = only_bin
    no_config = base / "no-config"
    shutil.copytree(good, no_config)
    (no_config / "config.json").unlink()
    out["no config.json"] = no_config
    bad_config = base / "bad-config"
    shutil.copytree(good, bad_config)
    (bad_config / "config.json").write_bytes(b"\x00{not json")
    out["config.json not JSON"] = bad_config
    hostile = base / "hostile-safetensors"
    shutil.copytree(good, hostile)
    (hostile / "model.safetensors").write_bytes((2**63 - 1).to_bytes(8, "little") + b"{}")
    (hostile / "pytorch_model.bin").write_bytes(exploit(marker))
    out["model.safetensors with a hostile header, pickle beside it"] = hostile
    truncated = base / "truncated-safetensors"
    shutil.copytree(good, truncated)
    data = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(data[: len(data) // 2])
    out["model.safetensors truncated"] = truncated
    remote = base / "remote-code"
    shutil.copytree(good, remote)
    config = json.loads((remote / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
    (remote / "config.json").write_text(json.dumps(config))
    (remote / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('remote code ran')\n")
    out["config asking for remote code"] = remote
    out["hub id with traversal"] = Path("../../../../etc")
    return out


@pytest.mark.slow
def test_unusable_models_are_refused_and_nothing_is_unpickled(tiny_model_dir, tmp_path, ledger):  # noqa: F811
    marker = tmp_path / "MARKER-unpickled"
    for what, path in model_dirs(tmp_path, tiny_model_dir, marker).items():
        manager = ModelManager(str(path), device="cpu")
        loaded = manager.load_model()
        error = manager.error or ""
        clear = not loaded and len(error) > 40 and "Traceback" not in error
        if what == "config asking for remote code":  # a known model_type loads its own class, code unread
            clear = loaded or clear
        ledger.bad_input(f"--model: {what}", detected=clear and not marker.exists(), lost=int(marker.exists()))
    assert not marker.exists()


def test_pickle_beside_safetensors_is_never_read(tiny_model_dir, tmp_path, ledger):  # noqa: F811
    marker = tmp_path / "MARKER-unpickled"
    both = shutil.copytree(tiny_model_dir, tmp_path / "both")
    (both / "pytorch_model.bin").write_bytes(exploit(marker))
    manager = ModelManager(str(both), device="cpu")
    ledger.bad_input("--model: pickled pytorch_model.bin beside safetensors",
                     detected=manager.load_model() and not marker.exists(), lost=int(marker.exists()))


BROKEN = {
    "syntax error": "def run(ctx)\n    pass\n",
    "no run()": "x = 1\n",
    "run without ctx": "def run():\n    pass\n",
    "raises on import": "raise RuntimeError('boom at import')\ndef run(ctx):\n    pass\n",
    "binary garbage": "\x00\xff\xfe garbage",
}


@pytest.mark.slow
def test_broken_experiment_files_exit_2_with_the_reason(tiny_model_dir, tmp_path, ledger):  # noqa: F811
    for i, (what, text) in enumerate(BROKEN.items()):
        path = write_experiment(tmp_path, text, name=f"broken_{i}.py")
        source = path.read_bytes()
        out = io.StringIO()
        code = headless_main(["--headless", "--model", str(tiny_model_dir), "--run-dir", str(tmp_path / f"run{i}"),
                              "--device", "cpu", "--experiment", str(path)], out=out)
        events = [json.loads(line) for line in out.getvalue().splitlines() if line.strip()]
        named = any(e["event"] == "alert" and str(path) in e["message"] for e in events)
        # lost: the operator's file changed, or a checkpoint the run left behind that does not verify
        checkpoints = CheckpointManager(make_tiny_qwen2(), tmp_path / f"run{i}" / "checkpoints", memory_snapshot=False)
        lost = int(path.read_bytes() != source)
        lost += sum(not checkpoints.verify_checkpoint(c["id"]) for c in checkpoints.list_checkpoints())
        ledger.bad_input(f"experiment file: {what}", detected=code == EXIT_BAD_INPUT and named, lost=lost)
