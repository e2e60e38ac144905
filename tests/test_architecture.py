"""The house plan, checked: no import cycles, no import from a lower layer to a higher one, and every
run-folder file name spelt in one module only (docs/architecture.md draws the same map)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "applefair"

# bottom to top: a module imports only from its own layer or below (docs/architecture.md)
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", ("applefair.errors", "applefair._version")),
    ("engine", ("applefair.engine",)),
    ("data", ("applefair.data",)),
    ("models", ("applefair.models",)),
    ("metrics", ("applefair.metrics",)),
    ("training", ("applefair.training",)),
    ("methods", ("applefair.apple", "applefair.baselines")),
    ("report", ("applefair.report",)),
    ("workflows", ("applefair.workflows",)),
    ("interface", ("applefair.commands", "applefair.cli", "applefair.__main__", "applefair")),
]


def _modules() -> dict[str, Path]:
    mods = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(SRC).with_suffix("").parts)
        mods[name.removesuffix(".__init__")] = f
    return mods


MODULES = _modules()


def _target(name: str) -> str | None:
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def _resolve(module: str, is_pkg: bool, level: int, name: str | None) -> str:
    if level == 0:
        return name or ""
    base = module.split(".") if is_pkg else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def import_graph() -> dict[str, set[str]]:
    """Module -> the package modules it imports (every import statement, lazy ones included, except under
    `if TYPE_CHECKING:`); a package's own __init__ (its public face) is not an edge from inside it."""
    edges: dict[str, set[str]] = {m: set() for m in MODULES}
    for mod, path in MODULES.items():
        tree = ast.parse(path.read_text())
        skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(
            node.test) for n in ast.walk(node)}
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [_target(a.name) for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(mod, is_pkg, node.level, node.module)
                targets = [_target(f"{base}.{a.name}") or _target(base) for a in node.names]
            for t in targets:
                if t and t != mod and not (mod.startswith(t + ".") and MODULES[t].name == "__init__.py"):
                    edges[mod].add(t)
    return edges


def layer_of(module: str) -> int:
    best, found = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, found = len(p), i
    assert found is not None, f"{module} belongs to no layer: add it to LAYERS and docs/architecture.md"
    return found


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in edges:
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_no_import_runs_up_the_layers():
    back = sorted(f"{m} ({LAYERS[layer_of(m)][0]}) -> {t} ({LAYERS[layer_of(t)][0]})"
                  for m, targets in import_graph().items() for t in targets if layer_of(t) > layer_of(m))
    assert back == []


def test_the_checks_see_a_cycle_and_a_back_edge():
    """The two checks above can fail: a planted cycle and a planted back-edge are found."""
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == [["a", "b", "c"]]
    assert layer_of("applefair.engine.io") < layer_of("applefair.workflows.demo")
    assert layer_of("applefair.apple.patch") == layer_of("applefair.baselines.base")


def _file_names() -> dict[str, str]:
    """Every file name the run-folder contract defines (a constant with a suffix)."""
    tree = ast.parse((PACKAGE / "engine" / "runfolder.py").read_text())
    return {node.value.value: node.targets[0].id for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
            and isinstance(node.value.value, str) and "." in node.value.value}


def test_every_run_file_name_is_spelt_in_the_run_folder_contract_only():
    names = _file_names()
    assert {"metrics.json", "per_sample.csv", "leakage.json", "frozen_check.json", "paired.json", "history.csv",
            "config.yaml", "patch.safetensors"} <= set(names)
    elsewhere = []
    for mod, path in MODULES.items():
        if mod == "applefair.engine.runfolder":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(node.value == n or node.value.endswith("/" + n) for n in names):
                    elsewhere.append(f"{path.relative_to(SRC)}:{node.lineno}: {node.value!r}")
    assert elsewhere == []


@pytest.mark.parametrize("layer", [name for name, _ in LAYERS])
def test_every_layer_is_documented(layer):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "architecture.md").read_text()
    assert f"`{layer}`" in doc
