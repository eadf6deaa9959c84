"""Security properties of the source and of what a run leaves on disk.

- No pickle anywhere (no import of pickle-family modules, no torch.load, no
  weights_only=False, no allow_pickle=True), no trust_remote_code=True, no eval/exec/compile
  of data, no unsafe YAML: an AST scan of engine/, console/, bench/ and scripts/.
- SQL is fixed text plus parameters: no execute() whose SQL is built with an f-string,
  .format, % or + (a PRAGMA naming a module constant is the one allowed form: PRAGMAs take
  no parameters).
- A real run writes only 0600 files and 0700 directories, even under umask 000.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.engine_harness import tiny_model_dir, write_experiment  # noqa: F401  (fixture)
from tests.reliability.helpers import walk_modes

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("engine", "console", "bench", "scripts")
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "marshal", "shelve", "cloudpickle"}
SQL_CALLS = {"execute", "executemany", "executescript"}


def _is_constant_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id.isupper()


def problems_in(source: str, filename: str) -> list[str]:
    """Every forbidden construct in one Python source, as 'file:line: what'."""
    found = []
    tree = ast.parse(source, filename)
    fixed = {n.target.id for n in ast.walk(tree)  # `for stmt in _SCHEMA:` -> stmt is fixed text
             if isinstance(n, ast.For) and isinstance(n.target, ast.Name) and _is_constant_name(n.iter)}
    for node in ast.walk(tree):
        where = f"{filename}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.Import):
            found += [f"{where}: imports {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom):
            if (node.module or "").split(".")[0] in PICKLE_MODULES:
                found.append(f"{where}: imports from {node.module}")
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append(f"{where}: imports torch.load")
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("eval", "exec", "compile", "__import__"):
                found.append(f"{where}: calls {func.id}()")
            if isinstance(func, ast.Attribute):
                owner = func.value.id if isinstance(func.value, ast.Name) else ""
                if (owner, func.attr) in (("torch", "load"), ("yaml", "load"), ("yaml", "unsafe_load")):
                    found.append(f"{where}: calls {owner}.{func.attr}()")
                if func.attr in SQL_CALLS and node.args and not _fixed_sql(node.args[0], fixed):
                    found.append(f"{where}: SQL built from values in {func.attr}()")
            for kw in node.keywords:
                bad = {"weights_only": False, "trust_remote_code": True, "allow_pickle": True}
                if kw.arg in bad and isinstance(kw.value, ast.Constant) and kw.value.value is bad[kw.arg]:
                    found.append(f"{where}: {kw.arg}={kw.value.value}")
                if kw.arg in ("trust_remote_code",) and not isinstance(kw.value, ast.Constant):
                    found.append(f"{where}: trust_remote_code from a variable")
    return found


def _fixed_sql(node: ast.AST, fixed: set[str] = frozenset()) -> bool:
    """SQL text that no runtime value can change."""
    if isinstance(node, ast.Constant) or _is_constant_name(node):
        return True
    if isinstance(node, ast.Name) and node.id in fixed:
        return True
    if isinstance(node, ast.JoinedStr):  # only PRAGMA with UPPER_CASE module constants
        text = "".join(v.value for v in node.values if isinstance(v, ast.Constant)).lstrip().upper()
        holes = [v.value for v in node.values if isinstance(v, ast.FormattedValue)]
        return text.startswith("PRAGMA ") and all(_is_constant_name(h) for h in holes)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _fixed_sql(node.left, fixed) and _fixed_sql(node.right, fixed)
    return False


def project_sources() -> list[Path]:
    return sorted(p for d in SCANNED for p in (ROOT / d).rglob("*.py") if ".venv" not in p.parts)


def test_the_scanner_finds_what_it_looks_for():
    bad = '''
import pickle
from dill import loads
import torch
torch.load("x.pt")
torch.load("x.pt", weights_only=False)
AutoModel.from_pretrained("x", trust_remote_code=True)
eval(text)
exec(code)
conn.execute(f"SELECT * FROM t WHERE name = '{name}'")
conn.execute("SELECT * FROM t WHERE id = %s" % user)
conn.execute("SELECT * FROM t WHERE id = {}".format(user))
conn.execute("SELECT " + column + " FROM t")
np.load("x.npy", allow_pickle=True)
yaml.load(text)
'''
    assert len(problems_in(bad, "bad.py")) == 14
    good = '''
conn.execute("SELECT * FROM t WHERE id = ?", (user,))
conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
conn.execute(_QUERY, params)
conn.execute("SELECT 1" + _WHERE)
model.eval()
AutoModel.from_pretrained("x", trust_remote_code=False, use_safetensors=True)
'''
    assert problems_in(good, "good.py") == []


def test_project_source_has_no_pickle_remote_code_eval_or_built_sql():
    files = project_sources()
    assert len(files) > 30 and any(p.name == "memory.py" for p in files)
    found = [p for f in files for p in problems_in(f.read_text(encoding="utf-8"), str(f.relative_to(ROOT)))]
    assert found == []


def test_memory_sql_uses_parameters():
    source = (ROOT / "engine" / "memory.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)
             and n.func.attr in SQL_CALLS]
    assert len(calls) >= 5
    assert problems_in(source, "memory.py") == []
    inserts = [c for c in calls if isinstance(c.args[0], ast.Constant) and "INSERT" in str(c.args[0].value)]
    assert inserts and all("?" in c.args[0].value and len(c.args) == 2 for c in inserts)


EXPERIMENT = """
    import torch

    def run(ctx):
        for i in range(4):
            with torch.no_grad():
                ctx.model.model.embed_tokens.weight.mul_(1.01)
            ctx.memory.record_modification("model.embed_tokens.weight", {"scale": 1.01})
            ctx.step(f"scale {i}")
        ctx.checkpoints.save_checkpoint({"purpose": "from the experiment"})
"""


@pytest.mark.slow
def test_a_real_run_writes_only_private_files_even_under_umask_000(tiny_model_dir, tmp_path):  # noqa: F811
    experiment = write_experiment(tmp_path, EXPERIMENT)
    run_dir = tmp_path / "home" / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "REDLINE_HOME": str(tmp_path / "home")}
    out = subprocess.run(
        [sys.executable, "-m", "engine.runtime.headless", "--headless", "--model", str(tiny_model_dir), "--run-dir",
         str(run_dir), "--device", "cpu", "--experiment", str(experiment), "--max-steps", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, preexec_fn=lambda: os.umask(0),
    )
    assert out.returncode == 0, out.stderr[-2000:]
    names = {p.name for p, _ in walk_modes(run_dir)}
    assert {"alerts.jsonl", "memory.sqlite3", "baseline_metrics.json", "manifests", "blobs"} <= names
    wrong = [(str(p), oct(mode)) for p, mode in walk_modes(run_dir)
             if mode != (0o700 if p.is_dir() else 0o600)]
    assert wrong == []
