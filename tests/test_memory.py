"""MemorySystem: SQLite (WAL) observations, coupled-modification tracking, concurrent access."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import torch

from engine.introspection import WeightInspector
from engine.memory import MemoryStoreError, MemorySystem, layer_aliases

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def memory(tmp_path):
    mem = MemorySystem(tmp_path / "memory")
    yield mem
    mem.close()


def test_record_and_query_filters(memory):
    a = memory.record_observation("baseline", category="baseline", importance=0.3, metadata={"perplexity": 7.5},
                                  tags=["run1", "base"])
    time.sleep(0.01)
    cut = time.time()
    b = memory.record_observation("success", category="success", importance=0.9, tags=["run1", "good"])
    c = memory.record_observation("it's a 'quote'; DROP TABLE observations; --", category="x'y", tags=["a'b"])
    assert [o.id for o in memory.observations.query()] == [a, b, c]
    (obs,) = memory.observations.query(category="baseline")
    assert obs.description == "baseline" and obs.data == {"perplexity": 7.5} and obs.importance == 0.3
    assert obs.tags == ["base", "run1"] and obs.timestamp <= cut
    assert [o.id for o in memory.observations.query(tags=["run1"])] == [a, b]
    assert [o.id for o in memory.observations.query(tags=["run1", "good"])] == [b]  # all must match
    assert memory.observations.query(tags=["good", "base"]) == []
    assert memory.observations.query(tags=["run"]) == []  # exact, not substring
    assert [o.id for o in memory.observations.query(min_importance=0.5)] == [b, c]
    assert [o.id for o in memory.observations.query(since=cut)] == [b, c]
    assert [o.id for o in memory.observations.query(since=datetime.fromtimestamp(cut))] == [b, c]
    assert [o.id for o in memory.observations.query(limit=2)] == [b, c]  # the newest two, oldest first
    assert memory.observations.query(category="x'y", tags=["a'b"])[0].description.startswith("it's")
    assert memory.observations.count() == 3 and memory.observations.count(tags="run1") == 2


def test_bad_input_is_refused_with_a_reason(memory):
    with pytest.raises(ValueError, match="importance"):
        memory.record_observation("x", importance=2)
    with pytest.raises(ValueError, match="description"):
        memory.record_observation("")
    with pytest.raises(ValueError, match="metadata must be a dict"):
        memory.record_observation("x", metadata=[1])
    with pytest.raises(ValueError, match="limit"):
        memory.observations.query(limit=-1)


def test_odd_metadata_values_are_kept(memory):
    memory.record_observation(
        "metrics", metadata={"loss": torch.tensor(2.5), "path": Path("/x/y"), "bad": float("nan"), "ids": (1, 2)}
    )
    (obs,) = memory.observations.query()
    assert obs.data == {"loss": 2.5, "path": "/x/y", "bad": "nan", "ids": [1, 2]}


def test_tied_modification_is_one_coupled_observation(memory, tiny_qwen2):
    memory.set_weight_inspector(WeightInspector(tiny_qwen2, "tiny"))
    memory.record_modification(layer_name="model.embed_tokens.weight", modification_data={"delta": 0.01})
    memory.record_modification("model.layers.0.mlp.up_proj.weight", {"scale": 1.1})
    (coupled,) = memory.observations.query(category="coupled_modification")
    assert coupled.data["primary_layer"] == "model.embed_tokens.weight"
    assert coupled.data["coupled_layers"] == ["lm_head.weight"]
    assert coupled.data["modification"] == {"delta": 0.01}
    for tag in ("embed_tokens", "lm_head.weight", "model.embed_tokens.weight", "lm_head", "embed_tokens.weight"):
        assert tag in coupled.tags
    assert "lm_head.weight" in coupled.description
    (plain,) = memory.observations.query(category="modification")
    assert plain.data["coupled_layers"] == [] and "up_proj" in plain.tags
    # Found from either side of the tie.
    assert memory.observations.query(tags=["lm_head.weight", "coupled_modification"]) == [coupled]
    with pytest.raises(ValueError, match="did you mean"):
        memory.record_modification("model.embed_token.weight", {})


def test_untied_and_no_inspector_are_plain_modifications(memory, tiny_llama):
    memory.record_modification("model.embed_tokens.weight", {"delta": 1})
    memory.set_weight_inspector(WeightInspector(tiny_llama))
    memory.record_modification("model.embed_tokens.weight", {"delta": 2})
    assert memory.observations.query(category="coupled_modification") == []
    assert len(memory.observations.query(category="modification", tags=["embed_tokens"])) == 2


def test_layer_aliases():
    assert layer_aliases("model.embed_tokens.weight") == [
        "model.embed_tokens.weight", "embed_tokens.weight", "embed_tokens", "model.embed_tokens"]
    assert layer_aliases("lm_head.weight") == ["lm_head.weight", "lm_head"]


def test_files_are_private(tmp_path):
    mem = MemorySystem(tmp_path / "data" / "memory")
    mem.record_observation("x")
    for f in (tmp_path / "data" / "memory").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f
    assert stat.S_IMODE((tmp_path / "data" / "memory").stat().st_mode) == 0o700
    mem.close()
    mem.close()
    with pytest.raises(MemoryStoreError, match="closed"):
        mem.record_observation("y")


def test_corrupt_database_names_the_file(tmp_path):
    d = tmp_path / "memory"
    d.mkdir()
    (d / "memory.sqlite3").write_bytes(b"this is not sqlite" * 500)
    with pytest.raises(MemoryStoreError) as err:
        MemorySystem(d)
    assert str(d / "memory.sqlite3") in str(err.value) and "Move it aside" in str(err.value)


_OTHER_PROCESS = r"""
import json, sys, time
from engine.memory import MemorySystem
mem = MemorySystem(sys.argv[1])
target = int(sys.argv[2])
for i in range(50):
    mem.record_observation(f"from process {i}", category="process", tags=["process"], metadata={"i": i})
seen, deadline = [], time.monotonic() + 60
while time.monotonic() < deadline:
    obs = mem.observations.query(category="thread")
    seen.append(len(obs))
    if len(obs) >= target:
        break
    time.sleep(0.005)
ok = all(o.data["i"] == int(o.description.split()[-1]) for o in obs)
print(json.dumps({"seen": seen, "intact": ok}))
"""


def test_thread_writer_and_process_reader_writer_at_once(tmp_path):
    path = tmp_path / "memory"
    mem = MemorySystem(path)
    n = 200
    proc = subprocess.Popen([sys.executable, "-c", _OTHER_PROCESS, str(path), str(n)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    errors = []

    def writer():
        try:
            for i in range(n):
                mem.record_observation(f"from thread {i}", category="thread", tags=["thread"], metadata={"i": i})
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    reads = []
    while thread.is_alive():
        reads.append(mem.observations.count(category="thread"))  # this thread reads while that one writes
    thread.join()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert errors == []
    report = json.loads(out)
    assert report["intact"] and report["seen"][-1] == n
    assert report["seen"] == sorted(report["seen"])  # a reader never sees writes disappear
    assert reads == sorted(reads)
    assert mem.observations.count(category="process") == 50
    mem.close()
    again = MemorySystem(path)  # durable: a fresh open sees everything
    assert again.observations.count() == n + 50
    again.close()
