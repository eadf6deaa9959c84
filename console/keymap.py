"""User keymap: a TOML file mapping binding ids to keys, applied with App.set_keymap.

    # ~/.config/redline/keymap.toml
    [keymap]
    save = "f2"
    emergency_stop = "ctrl+x,f12"

A bad file never stops the console: the problems are reported and the
default keys stay in force for the entries that were wrong.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterable
from pathlib import Path

from platformdirs import user_config_dir
from textual.binding import Binding


def default_keymap_path() -> Path:
    return Path(user_config_dir("redline")) / "keymap.toml"


def load_keymap(
    path: Path, bindings: Iterable[Binding], *, required: bool
) -> tuple[dict[str, str], list[str]]:
    """The usable entries of the keymap file at `path`, and one message per problem.

    `required`: a missing file is a problem (it was named on the command line)
    rather than the normal case of no user keymap.
    """
    if not path.exists():
        return {}, ([f"keymap {path}: no such file; using the default keys."] if required else [])
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        return {}, [f"keymap {path}: not valid TOML ({exc}); using the default keys."]
    except OSError as exc:
        return {}, [f"keymap {path}: cannot be read ({exc.strerror or exc}); using the default keys."]
    table = data.get("keymap", data)
    if not isinstance(table, dict):
        return {}, [f"keymap {path}: [keymap] must be a table of binding id = \"key\"."]
    by_id = {b.id: b for b in bindings if b.id}
    keymap: dict[str, str] = {}
    problems: list[str] = []
    for binding_id, keys in table.items():
        if binding_id not in by_id:
            problems.append(
                f"keymap {path}: unknown binding id {binding_id!r}; known ids: {', '.join(sorted(by_id))}."
            )
        elif not isinstance(keys, str) or not keys.strip():
            problems.append(f"keymap {path}: {binding_id} must be a key string such as \"ctrl+s\".")
        else:
            keymap[binding_id] = ",".join(k.strip() for k in keys.split(","))
    for binding_id, message in _clashes(path, keymap, by_id):
        keymap.pop(binding_id, None)
        problems.append(message)
    return keymap, problems


def _clashes(path: Path, keymap: dict[str, str], by_id: dict[str, Binding]) -> list[tuple[str, str]]:
    """(binding id, message) for each entry that would give one key to two different actions."""
    owner: dict[str, str] = {}
    for binding_id, binding in by_id.items():
        for key in keymap.get(binding_id, binding.key).split(","):
            owner.setdefault(key.strip(), binding_id)
    clashes = []
    for binding_id, keys in keymap.items():
        for key in keys.split(","):
            other = owner.get(key)
            if other and other != binding_id and by_id[other].action != by_id[binding_id].action:
                clashes.append((
                    binding_id,
                    f"keymap {path}: key {key!r} is already bound to '{other}'; "
                    f"keeping the default key for '{binding_id}'.",
                ))
                break
    return clashes
