"""The package's rooms and the rule of which may import which (docs/architecture.md).

The import graph is read from the source (every ``import`` and ``from ... import``,
function-local ones included), so a late import cannot hide an upward edge or a cycle.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "vlmsae"

# Rooms from the bottom up: a room may import only the rooms before it.
ROOMS = (
    "core",
    "data",
    "sae",
    "formats",
    "train",
    "encoders",
    "report",
    "metrics",
    "toyworld",
    "steer",
    "evaluate",
    "explore",
    "demo",
)
# Call-time edges that go up on purpose, each with its reason.
ALLOWED_UP = {
    ("vlmsae.sae.model", "vlmsae.formats.hub"): (
        "SAE.load / from_pretrained / push_to_hub are the public front door (as in "
        "transformers): they read every format, so the model calls formats at call time"
    ),
}
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for path in SRC.rglob("*.py"):
        parts = ["vlmsae", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


def _type_only(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:`` (never executed)."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def import_graph(*, runtime_only: bool = False) -> dict[str, set[str]]:
    """Module -> the vlmsae modules it imports (submodule named by ``from`` when it is one).

    The package root (a lazy facade) is left out as a target: importing it is free. With
    ``runtime_only``, imports under ``if TYPE_CHECKING:`` are left out too.
    """
    mods = _modules()
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in mods.items():
        package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        tree = ast.parse(path.read_text(), str(path))
        skip = _type_only(tree) if runtime_only else set()
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*up, *([node.module] if node.module else [])])
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in mods else base for a in node.names
                ]
            else:
                continue
            graph[name].update(t for t in targets if t.startswith("vlmsae.") and t != name)
    return graph


def room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if (v, w) in ALLOWED_UP:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_rooms_import_only_the_rooms_below():
    upward = []
    for src, targets in import_graph().items():
        for dst in targets:
            a, b = room(src), room(dst)
            if a is None or b is None or a == b or (src, dst) in ALLOWED_UP:
                continue
            if ROOMS.index(b) > ROOMS.index(a):
                upward.append(f"{src} -> {dst}")
    assert not upward, "imports that go up a room:\n" + "\n".join(sorted(upward))


def test_the_package_root_is_imported_only_for_its_version():
    offenders = []
    for src, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "vlmsae" and not node.level:
                names = {a.name for a in node.names}
                if src != "vlmsae" and names - {"__version__"}:
                    offenders.append(f"{src}: from vlmsae import {', '.join(sorted(names))}")
    assert not offenders, "\n".join(offenders)


def test_no_import_cycles():
    cycles = find_cycles(import_graph(runtime_only=True))
    assert not cycles, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in cycles)


def test_every_module_is_in_a_room():
    loose = {"vlmsae", "vlmsae.cli", "vlmsae.__main__"}
    outside = [m for m in _modules() if room(m) is None and m not in loose]
    assert not outside, f"modules outside the rooms {ROOMS}: {outside}"


def test_modules_stay_small():
    big = {
        str(p.relative_to(SRC)): n
        for p in SRC.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not big, f"modules over {MAX_LINES} lines: {big}"


TYPED_NAMES = {"sae", "store", "encoder", "source"}


def _any_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    args = [*fn.args.posonlyargs, *fn.args.args, *fn.args.kwonlyargs]
    return [
        a.arg
        for a in args
        if a.arg in TYPED_NAMES and a.annotation is not None and ast.unparse(a.annotation) == "Any"
    ]


@pytest.mark.parametrize("name", TYPED_NAMES)
def test_no_public_function_takes_any_for_an_sae_store_or_encoder(name):
    offenders = []
    for mod, path in _modules().items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            public = isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not (
                node.name.startswith("_")
            )
            if public and name in _any_params(node):
                offenders.append(f"{mod}.{node.name}")
    assert not offenders, f"public functions with `{name}: Any`: {sorted(offenders)}"
