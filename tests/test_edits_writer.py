"""The journal's writer thread: edits return before they are written, yet the hashes on record
are exactly what each edit left, a write the writer cannot do surfaces, and nothing is lost."""

from __future__ import annotations

import sqlite3

import pytest
import torch

from engine.edits import EditJournal, JournalWriteFailed
from engine.edits.content import content_hash
from engine.edits.records import JournalDB
from tests.test_edits import down_proj, journal, model, rank_one  # noqa: F401


def test_hashes_are_what_each_edit_left_though_the_writer_lags(model, journal):  # noqa: F811
    g = torch.Generator().manual_seed(8)
    with journal.edit("first", durable=True):
        rank_one(down_proj(model, 3), 0.01, g)
    reader = JournalDB(journal.dir)  # another connection: the row is there without a flush
    assert journal.pending == 0 and reader.list()[-1].description == "first"
    reader.close()
    blocker = sqlite3.connect(journal.dir / "journal.sqlite3")
    blocker.execute("BEGIN IMMEDIATE")  # the writer waits at its next row: what follows stays queued
    try:
        with journal.edit("held at its row"):
            rank_one(down_proj(model, 2), 0.01, g)
        w, other = down_proj(model, 0), down_proj(model, 1)
        with journal.edit("a") as a:
            rank_one(w, 0.01, g)
        left_by_a = content_hash("w", w)
        with journal.edit("b, same tensor") as b:  # its copy-on-write hands a's content to the writer
            rank_one(w, 0.01, g)
        with journal.edit("c") as c:
            rank_one(other, 0.01, g)
        with torch.no_grad():
            other.mul_(1.01)  # outside any edit, before the writer hashed what c left
        assert journal.pending >= 4
    finally:
        blocker.rollback()
        blocker.close()
    a_rec, b_rec, c_rec = journal.show(a.id), journal.show(b.id), journal.show(c.id)
    assert a_rec.tensors[0].hash_after == left_by_a == b_rec.tensors[0].hash_before
    assert b_rec.tensors[0].hash_after == content_hash("w", w)
    assert c_rec.outcome == "committed" and c_rec.tensors[0].hash_after is None  # unknown, never wrong
    with pytest.raises(Exception, match="changed outside the journal"):
        journal.revert(c.id)
    journal.revert(b.id)
    journal.revert(a.id)
    assert content_hash("w", w) == a_rec.tensors[0].hash_before


def test_a_write_that_fails_surfaces_naming_the_edit_and_is_retried(model, journal):  # noqa: F811
    g = torch.Generator().manual_seed(9)
    tmp = journal.dir / "tmp"
    tmp.rmdir()
    tmp.write_text("a file where the blobs' temporary directory should be")
    with journal.edit("cannot be written yet") as edit:
        rank_one(down_proj(model, 1), 0.01, g)
    with pytest.raises(JournalWriteFailed, match=rf"edit {edit.id} \('cannot be written yet'") as info:
        journal.flush()
    assert isinstance(info.value.cause, OSError) and "journal.flush()" in str(info.value)
    with pytest.raises(JournalWriteFailed, match=f"edit {edit.id}"):
        with journal.edit("refused while an earlier edit is not on record"):
            rank_one(down_proj(model, 2), 0.01, g)
    tmp.unlink()
    tmp.mkdir()
    assert [r.description for r in journal.list()] == ["cannot be written yet"]  # flushed: retried, written
    journal.revert(edit.id)
    with EditJournal(model, journal.run_dir / "other") as other:
        (other.dir / "tmp").rmdir()
        (other.dir / "tmp").write_text("")
        with other.edit("lost at close"):
            rank_one(down_proj(model, 3), 0.01, g)
        with pytest.raises(JournalWriteFailed, match="lost at close"):
            other.close()
