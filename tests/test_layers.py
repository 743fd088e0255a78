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
LEAVES = {"config.py", "errors.py", "digest.py", "reference.py", "safejson.py"}


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
