"""engine.paths: environment overrides, private directories, run-directory slugs."""

from __future__ import annotations

import stat
import sys

import pytest

from engine import paths


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_cache_and_data_dirs_follow_the_environment_and_are_private(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "home"))
    assert paths.cache_dir() == tmp_path / "cache"
    assert paths.data_dir() == tmp_path / "home"
    assert _mode(tmp_path / "cache") == 0o700
    assert _mode(tmp_path / "home") == 0o700


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="XDG variables steer platformdirs on Linux only")
def test_without_overrides_the_platform_directories_are_used(tmp_path, monkeypatch):
    monkeypatch.delenv("REDLINE_CACHE_DIR", raising=False)
    monkeypatch.delenv("REDLINE_HOME", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    assert paths.cache_dir() == tmp_path / "xdg-cache" / "redline"
    assert paths.data_dir() == tmp_path / "xdg-data" / "redline"


def test_default_run_dir_slugs(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "home"))
    runs = tmp_path / "home" / "runs"
    assert paths.default_run_dir("demo") == runs / "demo"
    assert paths.default_run_dir("Qwen/Qwen2.5-3B-Instruct") == runs / "Qwen--Qwen2.5-3B-Instruct"
    assert _mode(runs) == 0o700
    assert not (runs / "demo").exists()


def test_local_paths_with_the_same_name_get_different_run_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "home"))
    (tmp_path / "a" / "model").mkdir(parents=True)
    (tmp_path / "b" / "model").mkdir(parents=True)
    first = paths.default_run_dir(str(tmp_path / "a" / "model"))
    second = paths.default_run_dir(str(tmp_path / "b" / "model"))
    assert first != second
    assert first.name.startswith("model-") and second.name.startswith("model-")
    assert first == paths.default_run_dir(str(tmp_path / "a" / "model"))


@pytest.mark.parametrize("name", ["../../etc", "/", "..", "a b/c:d*e", "~/models/x y"])
def test_run_dir_never_escapes_runs(tmp_path, monkeypatch, name):
    monkeypatch.setenv("REDLINE_HOME", str(tmp_path / "home"))
    run_dir = paths.default_run_dir(name)
    assert run_dir.parent == tmp_path / "home" / "runs"
    assert run_dir.name and not run_dir.name.startswith(".")
    assert set(run_dir.name) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
