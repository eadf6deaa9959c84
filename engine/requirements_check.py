"""Is the engine installed, at versions it runs on? Checked before torch is imported.

On a GPU server the venv sees the system's packages, so an old system torch or transformers can
satisfy an import and crash later in the middle of a run. The engine refuses to start instead, with a
message naming the package, the version found and the one needed. A console-only install (`pip install
redline`, no `[engine]` extra) gets a message saying how to add the engine. Reads only distribution
metadata (importlib.metadata): nothing heavy is imported here.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from importlib.metadata import PackageNotFoundError, version

# The `engine` extra of pyproject.toml: distribution -> floor (tests/test_console_only_install.py
# checks the two agree).
ENGINE_FLOORS = {
    "torch": "2.4",
    "transformers": "4.56",
    "tokenizers": "0.22",
    "safetensors": "0.8",
    "accelerate": "0.34",
    "huggingface_hub": "0.34",
    "numpy": "1.24",
    "watchdog": "4.0",
    "blake3": "0.4",
    "xxhash": "3.0",
    "psutil": "5.9",
}
CONSOLE_ONLY_COMMANDS = "`redline attach` (also `--socket PATH`, e.g. through `ssh -L`), `ps`, `stop` and `replay`"


class EngineRequirementsError(RuntimeError):
    """The engine's dependencies are missing or older than its floors; the message says what to install."""


def release(text: str) -> tuple[int, ...]:
    """The numeric release of a version string: '2.13.0+cpu' -> (2, 13, 0), '4.56.0.dev0' -> (4, 56, 0)."""
    parts = []
    for piece in text.split("+")[0].split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
        if digits.end() < len(piece):  # '0rc1': a pre-release of this number
            break
    return tuple(parts)


def at_least(installed: str, floor: str) -> bool:
    """Whether `installed` is `floor` or newer, comparing releases padded with zeros."""
    have, need = release(installed), release(floor)
    width = max(len(have), len(need))
    return have + (0,) * (width - len(have)) >= need + (0,) * (width - len(need))


def importable(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def problems(floors: dict[str, str], installed=version, found=importable) -> tuple[list[str], list[str]]:
    """(missing distributions, 'name X.Y is older than Z' lines) for `floors`.

    `installed` maps a distribution name to its version (PackageNotFoundError when absent); `found`
    says whether a module of that name is importable all the same (a source build without metadata).
    """
    missing, old = [], []
    for name, floor in floors.items():
        try:
            have = installed(name)
        except PackageNotFoundError:
            if not found(name):  # every engine distribution imports under its own name
                missing.append(name)
            continue  # importable without metadata (a source build): its version cannot be told
        if not at_least(have, floor):
            old.append(f"{name} {have} is older than {floor}")
    return missing, old


def describe(missing: list[str], old: list[str]) -> str | None:
    """The message for the operator, or None when nothing is wrong."""
    if "torch" in missing:
        return ("the engine is not installed here: this is a console-only install (no "
                f"{', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''}). Install it with "
                f"`pip install 'redline[engine]'`. This install runs {CONSOLE_ONLY_COMMANDS}.")
    lines = []
    if missing:
        lines.append(f"missing: {', '.join(missing)}")
    lines.extend(old)
    if not lines:
        return None
    fixes = " ".join(f"'{name}>={ENGINE_FLOORS[name]}'" for name in missing + [line.split()[0] for line in old])
    return ("the engine cannot start: " + "; ".join(lines)
            + f". Install the engine's versions with `pip install 'redline[engine]'` or `pip install {fixes}`"
            " (a venv made with --system-site-packages sees the system's older packages).")


@functools.lru_cache(maxsize=1)
def engine_problem() -> str | None:
    """Why the engine cannot run in this environment, or None. Cached: installs do not change mid-run."""
    return describe(*problems(ENGINE_FLOORS))


def check_engine_requirements() -> None:
    """Raise EngineRequirementsError when the engine's dependencies are missing or too old."""
    if (message := engine_problem()) is not None:
        raise EngineRequirementsError(message)
