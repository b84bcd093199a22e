"""The package's import structure, read from the source (every import, lazy ones inside functions
included): imports run only downward through the layers below, no module imports itself back through
a chain, and the per-rank training code knows nothing of how MAGs are read or shards are written."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "magdi_dist"

# Lower layers never import higher ones, nor packages of their own layer (siblings stay independent).
LAYERS = [
    ["config_loader", "storage"],  # the loader of every config type; local paths and object-store URIs
    ["config", "cli_options"],  # cli_options: Typer options from a config model (imports nothing of ours)
    ["run_spec"],  # the resolved run: plain data over the config, read by train/, built by launch/
    ["mag", "model"],
    ["data", "track"],
    ["preprocess", "train", "eval"],
    ["launch", "debate"],  # debate reads questions through eval and writes MAGs through mag
    ["study"],
    ["recipes", "results"],  # results: collected raw files and the documents generated from them
    ["cli"],
]
LAYER = {pkg: i for i, names in enumerate(LAYERS) for pkg in names}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, prefix: str = "magdi_dist") -> set[str]:
    """Every ``prefix`` module ``path`` imports (``from a import b`` counts a.b when that is a module)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith(prefix)}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith(prefix):
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names if module_file(f"{node.module}.{a.name}")}
    return found


def module_file(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


GRAPH = {module_name(p): {m for m in imports(p) if module_file(m)} for p in PACKAGE.rglob("*.py")}
BENCHMARKS = {module_name(p): {m for m in imports(p, "benchmarks") if module_file(m)}
              for p in (ROOT / "benchmarks").rglob("*.py")}  # the experiments/ subfolder too


def top(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_every_package_has_a_layer():
    assert {top(m) for m in GRAPH if m != "magdi_dist"} <= set(LAYER)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_imports_run_downward(module):
    if module == "magdi_dist":
        return
    here = LAYER[top(module)]
    upward = sorted(m for m in GRAPH[module]
                    if m != "magdi_dist" and top(m) != top(module) and LAYER[top(m)] >= here)
    assert not upward, f"{module} (layer {here}) imports {upward}"


def test_train_knows_nothing_of_mags_or_preprocessing():
    train = {m: deps for m, deps in GRAPH.items() if top(m) == "train"}
    assert train
    bad = {m: sorted(d for d in deps if top(d) in ("mag", "preprocess")) for m, deps in train.items()}
    assert not any(bad.values()), bad


@pytest.mark.parametrize("graph", [GRAPH, BENCHMARKS], ids=["magdi_dist", "benchmarks"])
def test_no_import_cycle(graph):
    """Between modules (a package's __init__ re-exporting its own submodules is not a cycle)."""
    assert graph

    def edges(m):
        return {d for d in graph[m] if not (m == d.rsplit(".", 1)[0] or d == m.rsplit(".", 1)[0])}

    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(edges(m)):
            if state.get(d) == 1:
                cycle = stack[stack.index(d):] + [d]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
