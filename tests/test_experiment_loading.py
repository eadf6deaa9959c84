"""load_experiment: a run(ctx) from a file, or a clear error naming file and line."""

from __future__ import annotations

import pytest

from engine.runtime.experiment_context import ExperimentContext, ExperimentLoadError, load_experiment


def _write(tmp_path, text, name="exp.py"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_loads_run_from_a_file(tmp_path):
    path = _write(tmp_path, "import math\n\ndef run(ctx):\n    return math.pi\n")
    name, run = load_experiment(path)
    assert name == "exp" and run(None) > 3


def test_demo_is_built_in():
    name, run = load_experiment("demo")
    assert name == "demo" and callable(run)
    assert load_experiment(None)[0] == "demo"


def test_syntax_error_names_file_and_line(tmp_path):
    path = _write(tmp_path, "def run(ctx):\n    x = 1\n    if x\n        pass\n")
    with pytest.raises(ExperimentLoadError) as info:
        load_experiment(path)
    assert f"{path}:3" in str(info.value) and "syntax error" in str(info.value)


def test_error_while_importing_names_the_line(tmp_path):
    path = _write(tmp_path, "import os\n\nvalue = 1 / 0\n\ndef run(ctx):\n    pass\n")
    with pytest.raises(ExperimentLoadError) as info:
        load_experiment(path)
    assert f"{path}:3" in str(info.value) and "ZeroDivisionError" in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("def start(ctx):\n    pass\n", "defines no run"),
        ("run = 3\n", "defines no run"),
        ("def run():\n    pass\n", "exactly one argument"),
        ("def run(ctx, other):\n    pass\n", "exactly one argument"),
    ],
)
def test_unusable_run(tmp_path, text, expected):
    with pytest.raises(ExperimentLoadError, match=expected):
        load_experiment(_write(tmp_path, text))


def test_missing_file_directory_and_wrong_suffix(tmp_path):
    with pytest.raises(ExperimentLoadError, match="not found"):
        load_experiment(tmp_path / "absent.py")
    with pytest.raises(ExperimentLoadError, match="not a file"):
        load_experiment(tmp_path)
    with pytest.raises(ExperimentLoadError, match=r"\.py file"):
        load_experiment(_write(tmp_path, "def run(ctx): pass\n", name="exp.txt"))


class _Host:
    model = tokenizer = checkpoints = safety = inspector = device = None
    memory = None

    def __init__(self):
        self.logs = []

    def experiment_log(self, ctx, text):
        self.logs.append(text)


def test_context_batch_size_is_capped_after_halving():
    ctx = ExperimentContext(_Host(), "x", {"batch_size": 16})
    assert ctx.batch_size == 16
    assert ctx.halve_batch_size() == 8
    ctx.batch_size = 32  # the experiment asks again after a restart: the cap holds
    assert ctx.batch_size == 8
    ctx.batch_size = 4
    assert ctx.batch_size == 4
    with pytest.raises(ValueError, match="at least 1"):
        ctx.batch_size = 0
    for _ in range(10):
        ctx.halve_batch_size()
    assert ctx.batch_size == 1


def test_context_log_goes_to_host():
    host = _Host()
    ctx = ExperimentContext(host, "x")
    ctx.log(42)
    assert host.logs == ["42"] and ctx.memory is None and ctx.options == {}
