"""The layout tells the architecture: imports point only down the layers, and `pipeline/` has no import cycle.

Checked statically with `ast` over every module of the package, imports inside functions included (an import
that hides a cycle behind a function call is still a cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import sempt_cli

PACKAGE = Path(sempt_cli.__file__).parent

LAYERS: tuple[frozenset[str], ...] = (
    frozenset({"__init__", "errors", "io", "lazy"}),
    frozenset({"data"}),
    frozenset({"settings", "plugins", "presets"}),
    frozenset({"models"}),
    frozenset({"protocol"}),
    frozenset({"engine"}),
    frozenset({"methods", "report", "knowledge"}),
    frozenset({"pipeline", "interop"}),
    frozenset({"cli", "__main__"}),
)
"""Lowest first: cli → pipeline (+ interop) → methods / report / knowledge → engine → protocol → models →
settings → data → the package's leaves. A module may import its own layer or any layer below it."""


def _layer(top: str) -> int:
    return next(index for index, members in enumerate(LAYERS) if top in members)


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["sempt_cli", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__" and len(parts) > 2:
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _imports(path: Path) -> set[str]:
    """Every `sempt_cli.*` module a file imports, at any depth of its syntax tree."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return {name for name in names if name.startswith("sempt_cli.")}


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_top_level_module_has_a_layer() -> None:
    tops = {_top(module) for module in _modules()}
    assert tops <= set().union(*LAYERS), f"give these a layer: {sorted(tops - set().union(*LAYERS))}"


def test_imports_point_only_down() -> None:
    modules = _modules()
    upward = []
    for module, path in modules.items():
        for target in _imports(path):
            if target in modules and _layer(_top(target)) > _layer(_top(module)):
                upward.append(f"{module} imports {target}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_pipeline_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {
        module: {target for target in _imports(path) if target.startswith("sempt_cli.pipeline.") and target in modules}
        for module, path in modules.items() if module.startswith("sempt_cli.pipeline.")
    }
    state: dict[str, int] = {}
    cycles: list[str] = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" → ".join([*trail[trail.index(target):], target]))
            elif target not in state:
                visit(target, [*trail, target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, "import cycles in pipeline/:\n" + "\n".join(cycles)
