"""The trained demo model as a session fixture: trained at most once per test run.

Use it with `from tests.fixtures_demo import demo_model_dir` in a test module
(or `pytest_plugins = ["tests.fixtures_demo"]` in a conftest). It trains into the
session cache dir that tests/conftest.py sets (REDLINE_CACHE_DIR), once; later
requests in the same session, and a later session sharing that cache, reuse it.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def demo_model_dir(_redline_cache):
    """Path of the saved demo model (config.json, model.safetensors, tokenizer, training_report.json)."""
    from engine.demo_model import ensure_demo_model

    return ensure_demo_model()


@pytest.fixture
def demo_model(demo_model_dir):
    """A freshly loaded demo model (eval, float32, CPU) and its tokenizer: (model, tokenizer).

    Loading takes a few tens of milliseconds, so each test gets its own copy to damage.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from engine.transformers_progress import quiet_transformers_progress

    with quiet_transformers_progress():
        model = AutoModelForCausalLM.from_pretrained(demo_model_dir, use_safetensors=True, local_files_only=True)
    return model.eval(), AutoTokenizer.from_pretrained(demo_model_dir, local_files_only=True)
