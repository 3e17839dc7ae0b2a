"""The house plan (docs/architecture.md): packages import only what stands below them, there is no circle between
modules, and the only imports inside functions are the command line's lazy one."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

import alignlab

PACKAGE = Path(alignlab.__file__).parent

LEVELS = (
    ("alignlab", "errors", "files", "registries", "distributed", "hub", "assets"),
    ("data",),
    ("models",),
    ("objectives",),
    ("rewards",),
    ("decode",),
    ("config",),
    ("run_folder",),
    ("report",),
    ("evaluate",),
    ("train",),
    ("online",),
    ("diagnose",),
    ("redteam",),
    ("demo",),
    ("commands",),
    ("cli", "__main__"),
)
"""From the bottom up, as docs/architecture.md draws them: a unit imports its own level and the levels below."""

LEVEL = {unit: depth for depth, units in enumerate(LEVELS) for unit in units}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit_of(module: str) -> str:
    """The package or top-level module of `alignlab.x.y…` (``alignlab`` for the package itself)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "alignlab"


def known_modules() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("*.py")}


def imports(path: Path, modules: set[str]) -> list[tuple[str, int, bool]]:
    """(imported alignlab module, line, inside a function) of every import statement in `path`; ``from alignlab
    import rewards`` counts as importing ``alignlab.rewards``."""
    tree = ast.parse(path.read_text(), str(path))
    found = []

    def visit(node: ast.AST, inside: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = inside or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            if isinstance(child, ast.Import):
                found.extend((alias.name, child.lineno, inside) for alias in child.names
                             if alias.name.split(".")[0] == "alignlab")
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module \
                    and child.module.split(".")[0] == "alignlab":
                for alias in child.names:
                    name = f"{child.module}.{alias.name}"
                    found.append((name if name in modules else child.module, child.lineno, inside))
            visit(child, nested)

    visit(tree, False)
    return found


def import_graph() -> dict[str, list[tuple[str, int, bool]]]:
    modules = known_modules()
    return {module_name(path): imports(path, modules) for path in sorted(PACKAGE.rglob("*.py"))}


def test_every_unit_has_a_level():
    units = {unit_of(module) for module in known_modules()}
    assert units <= set(LEVEL), f"place these in LEVELS and docs/architecture.md: {sorted(units - set(LEVEL))}"


def test_no_import_runs_up_a_level():
    upward = [f"{module}:{line} imports {target}" for module, found in import_graph().items()
              for target, line, _ in found if LEVEL[unit_of(target)] > LEVEL[unit_of(module)]]
    assert not upward, "\n".join(upward)


def test_no_two_packages_import_each_other():
    pairs = {(unit_of(module), unit_of(target)) for module, found in import_graph().items() for target, _, _ in found}
    mutual = sorted({tuple(sorted(pair)) for pair in pairs if pair[0] != pair[1] and pair[::-1] in pairs})
    assert not mutual, mutual


def test_no_circle_between_modules():
    """Depth-first search over module → imported module, inside functions too."""
    graph = defaultdict(set)
    for module, found in import_graph().items():
        graph[module] |= {target for target, _, _ in found if target != module}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles = []

    def visit(path: list[str]) -> None:
        state[path[-1]] = 1
        for target in sorted(graph[path[-1]]):
            if state.get(target) == 1:
                circles.append(" → ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit([*path, target])
        state[path[-1]] = 2

    for module in sorted(graph):
        if module not in state:
            visit([module])
    assert not circles, "\n".join(circles)


def test_only_the_command_line_imports_inside_functions():
    inside = [f"{module}:{line} imports {target}" for module, found in import_graph().items()
              for target, line, in_function in found if in_function and module != "alignlab.cli"]
    assert not inside, "\n".join(inside)


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The reader itself: an import inside a function and `from alignlab import x` are both found."""
    source = tmp_path / "probe.py"
    source.write_text("from alignlab import rewards\n\ndef f():\n    from alignlab.train import loop\n")
    found = imports(source, {"alignlab.rewards", "alignlab.train", "alignlab.train.loop"})
    assert found == [("alignlab.rewards", 1, False), ("alignlab.train.loop", 4, True)]


def test_the_circle_search_finds_a_circle(monkeypatch):
    """A made-up graph with data → models → data: the search names the circle."""
    graph = {"alignlab.data.a": [("alignlab.models.b", 1, False)], "alignlab.models.b": [("alignlab.data.a", 1, False)]}
    monkeypatch.setitem(globals(), "import_graph", lambda: graph)
    with pytest.raises(AssertionError, match=re.escape("alignlab.data.a → alignlab.models.b → alignlab.data.a")):
        test_no_circle_between_modules()


def test_files_and_functions_stay_readable():
    """No file but config.py over 500 lines; no function over 60 lines unless its docstring says why it is kept
    whole; the loop of one run in at most 350 lines importing at most 12 alignlab modules."""
    long_files, long_functions = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        if len(source.splitlines()) > 500 and path.name != "config.py":
            long_files.append(f"{path.relative_to(PACKAGE)}: {len(source.splitlines())} lines")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60 \
                    and "kept whole" not in (ast.get_docstring(node) or "").lower():
                long_functions.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name}")
    assert not long_files, long_files
    assert not long_functions, f"over 60 lines without saying why: {long_functions}"
    loop = PACKAGE / "train" / "loop.py"
    assert len(loop.read_text().splitlines()) <= 350
    assert len({target for target, _, _ in imports(loop, known_modules())}) <= 12
