"""The demo corpus: English text that ships with Python itself (pydoc_data.topics).

The topics are split by name, not by position, so the held-out text is whole
documents the demo model never saw. The split depends only on the topic names
(ordered by their SHA-256), so it is the same on every run of a given Python
version; a Python release that adds or rewrites topics changes it.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache

SPLITS = ("train", "heldout")
HELDOUT_FRACTION = 0.10
DOCUMENT_SEPARATOR = "\n\n"


def _topics() -> dict[str, str]:
    from pydoc_data import topics

    return topics.topics


@lru_cache(maxsize=1)
def heldout_topics() -> frozenset[str]:
    """Topics taken in hash order until they hold about a tenth of the characters."""
    topics = _topics()
    total = sum(len(text) for text in topics.values())
    chosen: set[str] = set()
    held = 0
    for name in sorted(topics, key=lambda n: hashlib.sha256(n.encode("utf-8")).hexdigest()):
        if held >= total * HELDOUT_FRACTION:
            break
        chosen.add(name)
        held += len(topics[name])
    return frozenset(chosen)


def split_topics(split: str = "train") -> list[str]:
    """Topic names in `split`, sorted by name."""
    if split not in SPLITS:
        raise ValueError(f"unknown corpus split {split!r}: use one of {', '.join(SPLITS)}")
    heldout = heldout_topics()
    return sorted(name for name in _topics() if (name in heldout) == (split == "heldout"))


@lru_cache(maxsize=len(SPLITS))
def corpus_text(split: str = "train") -> str:
    """The documents of `split` ("train" or "heldout") joined by blank lines, in name order."""
    topics = _topics()
    return DOCUMENT_SEPARATOR.join(topics[name] for name in split_topics(split))
