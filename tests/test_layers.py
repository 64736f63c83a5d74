"""The package's layering is true: every import (module level or inside a function) points down, never up, and
no two modules import each other, directly or around a loop. docs/architecture.md explains the layers."""

from __future__ import annotations

import ast
from pathlib import Path

from conftest import SRC

#: Bottom to top. A module may import from its own layer's package and from layers below it; a single-module
#: layer (errors, utils, ...) may import only from below.
LAYERS = [
    "errors",
    "utils",
    "config",
    "configfile",
    "data",
    "formatting",
    "models",
    "rundir",
    "plan",
    "infer",
    "evals",
    "report",
    "train",
    "export",
    "ui",
    "demo",
    "commands",
    "cli",
    "__main__",
    "__init__",
]
PACKAGE = SRC / "thinktune"


def _module_name(path: Path, src: Path) -> str:
    parts = path.relative_to(src).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, src: Path) -> set[str]:
    """The thinktune modules `path` imports: `from a.b import c` counts as a.b.c when c is a module."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("thinktune"):
            for alias in node.names:
                if node.module == "thinktune" and alias.name == "__version__":
                    continue  # the package's version is metadata, not a layer
                candidate = f"{node.module}.{alias.name}"
                as_path = src.joinpath(*candidate.split("."))
                is_module = as_path.with_suffix(".py").is_file() or as_path.is_dir()
                found.add(candidate if is_module else node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("thinktune")}
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    """module -> the thinktune modules it imports, for every module under `root` (a thinktune package folder)."""
    return {_module_name(p, root.parent): _imports(p, root.parent) for p in sorted(root.rglob("*.py"))}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, deps in graph.items():
        for dep in deps:
            if dep == "thinktune":
                bad.append(f"{module} imports the package root thinktune (import the module that defines it)")
                continue
            if LAYERS.index(layer_of(dep)) > LAYERS.index(layer_of(module)):
                bad.append(f"{module} ({layer_of(module)}) imports {dep} ({layer_of(dep)}), a layer above it")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[str]:
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if dep not in graph:
                continue
            if state.get(dep) == "open":
                loop = path[path.index(dep) :] + [dep]
                found.append(" -> ".join(loop))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_every_layer_is_named():
    unknown = {layer_of(m) for m in import_graph()} - set(LAYERS)
    assert not unknown, (
        f"modules outside the layer list {LAYERS}: add them to LAYERS and docs/architecture.md"
    )


def test_no_module_imports_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_the_checks_can_fail(tmp_path):
    """Negative control: an upward import and a cycle written into a copy of two modules are both named."""
    pkg = tmp_path / "thinktune"
    (pkg / "data").mkdir(parents=True)
    (pkg / "train").mkdir()
    (pkg / "data" / "load.py").write_text("def f():\n    from thinktune.train.recipe import train\n")
    (pkg / "train" / "recipe.py").write_text("from thinktune.data.load import x\n")
    graph = import_graph(pkg)
    assert graph == {
        "thinktune.data.load": {"thinktune.train.recipe"},
        "thinktune.train.recipe": {"thinktune.data.load"},
    }
    assert upward_imports(graph) == [
        "thinktune.data.load (data) imports thinktune.train.recipe (train), a layer above it"
    ]
    assert cycles(graph) == ["thinktune.data.load -> thinktune.train.recipe -> thinktune.data.load"]
