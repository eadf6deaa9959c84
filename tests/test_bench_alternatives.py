"""The benchmarks' alternatives are measured the way a user would run them, never derived.

No timing is asserted here (speed is what bench/ prints); these check that the alternative
columns come from real runs and are reported as measured.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from tests.engine_harness import tiny_model_dir  # noqa: F401  (fixture)

BENCH = Path(__file__).resolve().parents[1] / "bench"


def bench(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_stop_alternative_is_a_real_flag_checked_loop(tiny_model_dir):  # noqa: F811
    latencies, forward_ms = bench("stop").flag_stop(str(tiny_model_dir), "cpu", None, batch=1, seq=8,
                                                     trials=3, timed=4)
    assert len(latencies) == 3 and all(v > 0 for v in latencies)
    assert len(forward_ms) == 4 and all(v > 0 for v in forward_ms)


def test_a_negative_console_share_is_reported_as_measured():
    with_console = [1.0, 1.2, 0.8, 1.1, 0.9]
    engine_only = [1.05, 1.25, 0.85, 1.15, 0.95]
    share, noise = bench("console").console_share(with_console, engine_only)
    assert share == pytest.approx(-0.05)  # not clamped to 0
    assert noise == pytest.approx(2 * (0.025 / 5 + 0.025 / 5) ** 0.5)
    assert abs(share) <= noise  # the bench prints it as within noise
