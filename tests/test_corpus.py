"""engine.corpus: the demo corpus and its deterministic, disjoint split."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydoc_data import topics

from engine.corpus import corpus_text, heldout_topics, split_topics


def test_split_is_disjoint_and_covers_every_topic():
    train, heldout = set(split_topics("train")), set(split_topics("heldout"))
    assert train and heldout
    assert not train & heldout
    assert train | heldout == set(topics.topics)


def test_heldout_holds_about_a_tenth_of_the_text():
    train, heldout = corpus_text("train"), corpus_text("heldout")
    share = len(heldout) / (len(train) + len(heldout))
    assert 0.08 < share < 0.2
    assert corpus_text() == train


def test_documents_appear_whole_in_their_split():
    held_name = split_topics("heldout")[0]
    train_name = split_topics("train")[0]
    assert topics.topics[held_name] in corpus_text("heldout")
    assert topics.topics[held_name] not in corpus_text("train")
    assert topics.topics[train_name] in corpus_text("train")


def test_split_does_not_depend_on_hash_randomisation():
    code = "from engine.corpus import heldout_topics; print(','.join(sorted(heldout_topics())))"
    outputs = set()
    for seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        outputs.add(done.stdout.strip())
    assert outputs == {",".join(sorted(heldout_topics()))}


def test_unknown_split_is_a_clear_error():
    with pytest.raises(ValueError, match="train, heldout"):
        corpus_text("test")
