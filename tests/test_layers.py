"""Layers point one way (DESIGN.md): http -> storage -> drivers; leaves import nothing."""

from __future__ import annotations

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "registry"

# package -> project packages it must never import
FORBIDDEN = {
    "drivers": {"http", "storage", "auth", "server", "cli", "gc_cli", "config"},
    "storage": {"http", "auth", "server", "cli", "gc_cli"},
}
LEAVES = {"errors.py", "digest.py", "reference.py", "safejson.py"}
# Leaf packages: their modules import each other and nothing else from the project.
LEAF_PACKAGES = {"config"}


def _project_imports(path: pathlib.Path) -> set[str]:
    """Top-level registry subpackages/modules imported by ``path`` (absolute or relative)."""
    tree = ast.parse(path.read_text())
    rel = path.relative_to(ROOT).parts
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("registry."):
                    out.add(a.name.split(".")[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                if node.module and node.module.startswith("registry."):
                    out.add(node.module.split(".")[1])
                continue
            base = list(rel[:-1])[: len(rel) - node.level]
            parts = base + (node.module.split(".") if node.module else [])
            if parts:
                out.add(parts[0].removesuffix(".py"))
            else:
                out.update(a.name for a in node.names)
    return out


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    rel = path.relative_to(ROOT)
    imported = _project_imports(path)
    if len(rel.parts) == 1 and rel.name in LEAVES:
        assert not (imported - {"__init__"}), f"{rel} is a leaf but imports {imported}"
        return
    package = rel.parts[0]
    if package in LEAF_PACKAGES:
        assert not (imported - {package}), f"{rel} is in a leaf package but imports {imported}"
        return
    bad = imported & FORBIDDEN.get(package, set())
    assert not bad, f"{rel} imports {sorted(bad)} against the layering"


def _code_strings(path: pathlib.Path) -> list[str]:
    """String literals in code, docstrings excluded."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                docstrings.add(id(body[0].value))
    return [
        n.value
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
    ]


def test_only_paths_module_spells_storage_keys():
    offenders = []
    for p in _modules():
        rel = p.relative_to(ROOT)
        if rel.as_posix() == "storage/paths.py":
            continue
        for value in _code_strings(p):
            if "docker/registry/v2" in value or ("_layers" in value and rel.parts[0] != "storage"):
                offenders.append(f"{rel}: {value!r}")
    assert offenders == []


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _module_graph() -> dict[str, set[str]]:
    """registry module -> the registry modules it imports (lazy and type-only imports too:
    a circle through them is still a circle a reader has to untangle)."""
    modules = {_module_name(p): p for p in _modules()}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - node.level + 1]
                    target = ".".join(base + ([node.module] if node.module else []))
                else:
                    target = node.module or ""
                for alias in node.names:
                    full = f"{target}.{alias.name}"
                    deps.add(full if full in modules else target)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names)
        graph[name] = {d for d in deps if d in modules and d != name}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[set[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(component)
    return found


def test_cycle_finder_finds_cycles():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert _cycles(graph) == [{"a", "b", "c"}]
    assert _cycles({"a": {"b"}, "b": set()}) == []


# The HTTP handlers and the app still import each other; the route table (issue 13, item 1)
# removes this circle, and this list with it.
KNOWN_CYCLES = [
    {"registry.http.admin", "registry.http.app", "registry.http.blobs", "registry.http.manifests"}
]


def test_no_import_circles():
    assert sorted(map(sorted, _cycles(_module_graph()))) == sorted(map(sorted, KNOWN_CYCLES))
