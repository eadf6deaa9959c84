"""bench/gpu_check.py keeps working: `--device cpu` runs every step at small size and prints one table.

No figure is asserted beyond what is counted (reads per scan, bit-exact restores, the engine's
outcome after a real allocator failure); the CUDA run itself needs a GPU.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def gpu_check():
    spec = importlib.util.spec_from_file_location("bench_gpu_check", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_the_cpu_run_passes_every_step_and_prints_one_table(tmp_path, capsys):
    code = gpu_check().main(["--device", "cpu", "--dir", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    table = out[out.index("measure"):]
    for row in ("device copy (limit)", "load, --device cpu", "scan clean: device-to-host reads",
                "scan damaged: device-to-host reads", "first save", "incremental save",
                "rollback from host memory", "disk restore, every tensor verified", "engine gauges per GPU",
                "emergency stop mid-forward", "out of memory: allocated at the failure",
                "allocated at the retry", "engine alive after it"):
        assert row in table, row
    assert "FAIL" not in table and out.rstrip().endswith("all checks passed")
    assert list(tmp_path.iterdir()) == []  # its scratch directory is removed


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine with CUDA runs the GPU check for real")
def test_asking_for_cuda_without_it_exits_2_and_says_what_to_do(capsys):
    assert gpu_check().main([]) == 2
    assert "--device cpu" in capsys.readouterr().err
