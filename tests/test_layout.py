"""The architecture, held: benchmark/ is split into rooms by role, imports run one way between
them, and no module imports itself back through a chain of others.

Every import counts: at the top of a module, inside a function, and under TYPE_CHECKING, since a
cycle that only a late import hides still ties the two modules together for a reader.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("benchmark", "methods", "budgets")

# Which rooms each room may import (besides itself). The rule in one line:
#   run_all → tools → launch → train → config → {data, budgets → methods}; records sits below
#   train, launch and report; report reads records and config, never train or launch.
ALLOWED: dict[str, set[str]] = {
    "methods": set(),
    "budgets": {"methods"},
    "benchmark.files": set(),
    "benchmark.data": {"benchmark.files"},
    "benchmark.records": {"benchmark.files"},
    "benchmark.config": {"benchmark.data", "benchmark.files", "budgets", "methods"},
    "benchmark.train": {"benchmark.config", "benchmark.data", "benchmark.records", "benchmark.files",
                        "budgets", "methods"},
    "benchmark.launch": {"benchmark.train", "benchmark.config", "benchmark.data", "benchmark.records",
                         "benchmark.files", "budgets", "methods"},
    "benchmark.report": {"benchmark.records", "benchmark.config", "benchmark.files", "budgets", "methods"},
    "benchmark.tools": {"benchmark.launch", "benchmark.train", "benchmark.config", "benchmark.data",
                        "benchmark.records", "benchmark.files", "budgets", "methods"},
}
ROOMS = ("config", "data", "records", "train", "launch", "report", "tools")


def module_files() -> dict[str, Path]:
    files = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            files[name] = path
    return files


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules that `name` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            for alias in node.names:  # `from pkg import module` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {module for module in found if module in known and module != name}


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    files = module_files()
    return {name: imports_of(name, path, set(files)) for name, path in files.items()}


def room_of(module: str) -> str:
    if module == "benchmark.files":
        return module
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "benchmark" else parts[0]


def test_benchmark_is_split_into_rooms_with_nothing_loose():
    loose = sorted(p.name for p in (REPO / "benchmark").glob("*.py") if p.name not in ("__init__.py", "files.py"))
    assert loose == [], f"modules outside a room: {loose}"
    for room in ROOMS:
        assert (REPO / "benchmark" / room / "__init__.py").is_file(), room


def test_the_import_parser_sees_late_and_type_only_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from a.b import C\n"
                      "def f():\n    from .c import d\n    import a.e\n")
    known = {"a.b", "a.c", "a.c.d", "a.e", "a"}
    assert imports_of("a.mod", source, known) == {"a.b", "a.c.d", "a.e"}


def test_rooms_import_only_downwards(graph):
    wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                   if room_of(target) != room_of(module) and room_of(target) not in ALLOWED[room_of(module)])
    assert wrong == []


def find_cycles(graph: dict[str, set[str]]) -> list[str]:
    """Each import cycle found by a depth-first walk, as "a → b → a"."""
    cycles = []
    state: dict[str, int] = {}   # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" → ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    return cycles


def test_the_cycle_finder_finds_every_cycle():
    graph = {"p": {"p.a"}, "p.a": {"p"}, "x": {"y"}, "y": {"z"}, "z": {"x"}, "w": {"x"}}
    assert find_cycles(graph) == ["p → p.a → p", "x → y → z → x"]


def test_no_import_cycles(graph):
    assert find_cycles(graph) == []

