"""fsutil.atomic_write: the one way files are written whole (real files, real failures)."""

from __future__ import annotations

import os
import stat

import pytest

from engine.fsutil import TEMP_PREFIX, atomic_write, seal_directory


def test_replaces_whole_and_private(tmp_path):
    target = tmp_path / "f.json"
    target.write_text("old")
    assert atomic_write(target, [b"ne", memoryview(b"w")])
    assert target.read_text() == "new"
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["f.json"]


def test_without_overwrite_an_existing_file_is_kept(tmp_path):
    target = tmp_path / "f"
    assert atomic_write(target, b"first", overwrite=False)
    assert not atomic_write(target, b"second", overwrite=False)
    assert target.read_bytes() == b"first"
    assert os.listdir(tmp_path) == ["f"]


def test_a_failing_writer_leaves_nothing_behind(tmp_path):
    target = tmp_path / "out" / "f"
    target.parent.mkdir()
    staging = tmp_path / "staging"
    staging.mkdir()

    def half_then_fail(tmp):
        tmp.write_bytes(b"half")
        raise RuntimeError("writer died")

    with pytest.raises(RuntimeError, match="writer died"):
        atomic_write(target, half_then_fail, temp_dir=staging)
    assert not target.exists() and os.listdir(staging) == []


def test_the_temp_file_is_written_where_asked(tmp_path):
    seen = []
    atomic_write(tmp_path / "f", lambda tmp: (seen.append(tmp), tmp.write_bytes(b"x")), temp_dir=tmp_path)
    assert seen[0].parent == tmp_path and seen[0].name.startswith(TEMP_PREFIX)
    assert (tmp_path / "f").read_bytes() == b"x"


def test_seal_directory_makes_files_private(tmp_path):
    (tmp_path / "a").write_text("a")
    os.chmod(tmp_path / "a", 0o644)
    seal_directory(tmp_path)
    assert stat.S_IMODE(os.stat(tmp_path / "a").st_mode) == 0o600
