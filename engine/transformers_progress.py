"""Silence transformers' own progress bars while Redline reports progress itself.

Shared by the model loader and the demo model's trainer; it lives apart from
both so neither has to import the other for it.
"""

from __future__ import annotations

import contextlib
from typing import Iterator


@contextlib.contextmanager
def quiet_transformers_progress() -> Iterator[None]:
    """Turn transformers' tqdm bars off for the block (they would draw over the console)."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()
