"""Theme files and the user keymap file."""

from __future__ import annotations

import pytest

from console.bindings import BINDINGS
from console.keymap import load_keymap
from console.themes import SEVERITY_VARIABLES, ThemeFileError, default_theme_name, load_themes, theme_from_toml


def test_four_themes_with_severity_colours():
    themes = {t.name: t for t in load_themes()}
    assert {"redline-dark", "redline-light", "redline-high-contrast", "redline-mono"} <= set(themes)
    for theme in themes.values():
        assert set(SEVERITY_VARIABLES) <= set(theme.variables), theme.name
    assert themes["redline-light"].dark is False
    assert len({themes["redline-dark"].variables[f"sev-{s}"] for s in ("critical", "high", "medium", "low", "info")}) == 5


def test_no_color_selects_the_monochrome_theme():
    assert default_theme_name({"NO_COLOR": ""}) == "redline-mono"
    assert default_theme_name({}) == "redline-dark"


def test_a_bad_theme_file_names_the_problem(tmp_path):
    path = tmp_path / "t.toml"
    path.write_text('name = "x"\nprimary = "#fff"\nprimry = "#000"\n')
    with pytest.raises(ThemeFileError, match="unknown key.*primry"):
        theme_from_toml(path)
    path.write_text('name = "x"\n[variables]\nsev-critical = 3\n')
    with pytest.raises(ThemeFileError, match="'name' and 'primary'"):
        theme_from_toml(path)


def test_keymap_file_overrides_by_binding_id(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text('[keymap]\nsave = "f2"\nhelp = "h, f1"\n')
    keymap, problems = load_keymap(path, BINDINGS, required=True)
    assert keymap == {"save": "f2", "help": "h,f1"} and problems == []


def test_keymap_problems_are_reported_and_the_rest_applies(tmp_path):
    path = tmp_path / "keymap.toml"
    path.write_text('sav = "f2"\nquit = 5\nfilter = "s"\nhelp = "h"\n')
    keymap, problems = load_keymap(path, BINDINGS, required=False)
    assert keymap == {"help": "h"}
    assert any("unknown binding id 'sav'" in p and "save" in p for p in problems)
    assert any("quit must be a key string" in p for p in problems)
    assert any("'s' is already bound to 'save'" in p for p in problems)


def test_unreadable_or_missing_keymaps(tmp_path):
    path = tmp_path / "keymap.toml"
    assert load_keymap(path, BINDINGS, required=False) == ({}, [])
    assert "no such file" in load_keymap(path, BINDINGS, required=True)[1][0]
    path.write_text("save = \n")
    keymap, problems = load_keymap(path, BINDINGS, required=True)
    assert keymap == {} and "not valid TOML" in problems[0]


def test_the_console_never_imports_torch():
    import subprocess
    import sys

    code = ("import sys, console.app, console.cli, console.replay; from engine.runtime import Engine; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


async def test_no_color_starts_in_the_monochrome_theme(monkeypatch, recording):
    from console.app import RedlineApp
    from console.replay import ReplaySource

    monkeypatch.setenv("NO_COLOR", "1")
    app = RedlineApp(ReplaySource(recording))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        assert app.theme == "redline-mono"
        assert app.theme_variables["sev-critical"] == "#ffffff"
