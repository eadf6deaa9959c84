"""The project's shape: no import cycles, no oversized modules, engine and console kept apart.

Reads the source of every module under engine/ and console/ with `ast` (nothing
is imported or run). An import counts wherever it is written, at module level
or deferred inside a function: a deferred import that closes a cycle still ties
the two modules together. `from engine import x` means the module engine.x when
that module exists, else the package engine itself.
"""

from __future__ import annotations

import ast
from pathlib import Path

from engine.requirements_check import ENGINE_FLOORS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "console")
MAX_LINES = 500
FORBIDDEN = {
    "engine": {"textual"},  # the engine runs headless, without any UI library
    "console": set(ENGINE_FLOORS),  # the console installs and starts without the engine extra's packages
}


def project_modules(root: Path, packages: tuple[str, ...]) -> dict[str, Path]:
    """Dotted module name -> source file, for every .py file under the given packages."""
    modules = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Every module name `name` imports, absolute, relative imports resolved; includes third-party names."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in modules else base)
    return found


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the project modules it imports (itself excluded)."""
    modules = project_modules(root, packages)
    return {
        name: {m for m in imported_names(name, path, modules) if m in modules and m != name}
        for name, path in modules.items()
    }


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan), each sorted; sorted overall."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(graph[module]):
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(groups)


def oversized_modules(root: Path, packages: tuple[str, ...], max_lines: int) -> dict[str, int]:
    """Path (relative to root) -> line count, for modules longer than max_lines."""
    counts = {
        str(path.relative_to(root)): len(path.read_text(encoding="utf-8").splitlines())
        for path in project_modules(root, packages).values()
    }
    return {path: lines for path, lines in sorted(counts.items()) if lines > max_lines}


def forbidden_imports(root: Path, package: str, banned: set[str]) -> list[str]:
    """'module imports name' for each import in `package` whose top-level name is banned."""
    modules = project_modules(root, (package,))
    return sorted(
        f"{name} imports {imported}"
        for name, path in modules.items()
        for imported in imported_names(name, path, modules)
        if imported.split(".")[0] in banned
    )


def test_no_import_cycles_between_project_modules():
    cycles = import_cycles(import_graph(ROOT, PACKAGES))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(group) for group in cycles)


def test_no_module_is_oversized():
    oversized = oversized_modules(ROOT, PACKAGES, MAX_LINES)
    assert not oversized, f"modules over {MAX_LINES} lines:\n" + "\n".join(f"{p} ({n})" for p, n in oversized.items())


def test_engine_never_imports_textual_and_console_never_imports_torch():
    for package, banned in FORBIDDEN.items():
        assert forbidden_imports(ROOT, package, banned) == []


def write_package(root: Path, files: dict[str, str]) -> None:
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")


def test_the_checks_find_what_they_look_for(tmp_path):
    """A synthetic package with a cycle closed by deferred and relative imports, a long module, a torch import."""
    write_package(tmp_path, {
        "pkg/__init__.py": "VERSION = 1\n",
        "pkg/a.py": "from pkg import b\n",  # a module: pkg.b
        "pkg/b.py": "def f():\n    from .sub.c import thing\n    return thing\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/c.py": "import torch\n\ndef g():\n    from .. import a\n    return a\nthing = 1\n",
        "pkg/d.py": "from pkg import VERSION\nfrom pkg.sub import c\n" + "x = 1\n" * 20,  # a name: the package
    })
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == {"pkg", "pkg.sub.c"}
    assert import_cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c"]]
    assert oversized_modules(tmp_path, ("pkg",), 20) == {str(Path("pkg/d.py")): 22}
    assert forbidden_imports(tmp_path, "pkg", {"torch"}) == ["pkg.sub.c imports torch"]
    graph["pkg.sub.c"] = set()  # without the deferred import in g() the cycle is gone
    assert import_cycles(graph) == []
