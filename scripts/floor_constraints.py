"""Print pip constraints that pin each runtime dependency of pyproject.toml to its floor.

`make test-min` installs with them (scripts/setup-venv.sh, REDLINE_FLOORS=1) so the suite runs on the
oldest versions the project claims to support. Every `name>=X` of the base dependencies and of the
`engine` extra becomes `name==X`; torch is left out: the set-up chooses it (see scripts/setup-venv.sh).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

FLOOR = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*>=\s*([0-9][^,;\s]*)\s*(?:,|;|$)")
CHOSEN_BY_SETUP = {"torch"}


def floor_pins(pyproject: Path) -> list[str]:
    """`name==floor` for each runtime requirement with a `>=` floor, in pyproject order."""
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["engine"]
    pins = []
    for requirement in requirements:
        match = FLOOR.match(requirement)
        if match is None:
            raise SystemExit(f"floor_constraints.py: {requirement!r} has no '>=' floor to pin")
        name, floor = match.groups()
        if name.lower() not in CHOSEN_BY_SETUP:
            pins.append(f"{name}=={floor}")
    return pins


if __name__ == "__main__":
    root = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]
    print("\n".join(floor_pins(root / "pyproject.toml")))
