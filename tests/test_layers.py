"""Layers point one way (DESIGN.md, registry/README.md); no import circles; one route table.

    cli.py, server.py, supervisor.py, gc_cli.py, __main__.py   entry points: nothing imports them
    notifications.py   events from exchanges: ops, http's route table
    http/              HTTP: the route table, handlers, the app -> storage, ops, auth.policy
    ui/                the web UI's server side, at http's level -> http, storage, auth
    auth/              who may do what (http.request only for its types)
    ops/               metrics, health, the exchange record, the debug listener -> storage, drivers
    storage/           OCI: blobs, uploads, manifests, tags, GC, the key layout -> drivers
    drivers/           keys and bytes
    leaves             errors.py digest.py reference.py safejson.py cpuquota.py, the config/ package
"""

from __future__ import annotations

import ast
import functools
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent / "registry"

# The entry points sit on top: no module below them imports one (cli.py imports server.py
# and gc_cli.py, __main__.py imports cli.py, server.py imports supervisor.py).
ENTRY_POINTS = {"cli", "server", "supervisor", "gc_cli", "__main__"}
# package (or top-level module) -> project packages it must never import, beyond the entry
# points. DESIGN.md: http -> storage -> drivers, never back, and http never -> drivers.
FORBIDDEN = {
    "drivers": {"http", "storage", "auth", "ops", "notifications", "config", "ui"},
    "storage": {"http", "auth", "ops", "notifications", "ui"},
    "http": {"drivers", "notifications"},
    "ui": {"drivers", "notifications"},  # the web UI sits at http's level (registry/ui/)
    # the pull-through cache: between http and storage (http -> proxy -> storage)
    "proxy": {"http", "ui", "auth", "notifications"},
    "ops": {"http", "auth", "notifications", "ui"},
    "auth": {"storage", "drivers", "ops", "notifications", "ui"},
    "notifications.py": {"storage", "drivers", "auth"},
}
LEAVES = {"errors.py", "digest.py", "reference.py", "safejson.py", "cpuquota.py", "logs.py"}
# Leaf packages: their modules import each other and nothing else from the project.
LEAF_PACKAGES = {"config"}
PLACED = (
    set(FORBIDDEN) | LEAVES | LEAF_PACKAGES | {f"{e}.py" for e in ENTRY_POINTS}
    | {"__init__.py"}  # the version
)
# auth types its hooks with the request the app hands them, and needs nothing else of http.
AUTH_MAY_IMPORT_FROM_HTTP = {"registry.http.request"}


def _modules() -> list[pathlib.Path]:
    return sorted(p for p in ROOT.rglob("*.py"))


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_point_one_way(path):
    rel = path.relative_to(ROOT)
    # the top-level registry subpackages/modules it imports ("__init__": the package itself)
    imported = {
        d.split(".")[1] if "." in d else "__init__" for d in _module_graph()[_module_name(path)]
    }
    if len(rel.parts) == 1 and rel.name in LEAVES:
        assert not (imported - {"__init__"}), f"{rel} is a leaf but imports {imported}"
        return
    package = rel.parts[0]
    # Every package has a place in the layering above (a new one must be given one).
    assert package in PLACED, f"{rel}: {package} has no place in FORBIDDEN/LEAVES/ENTRY_POINTS"
    if package in LEAF_PACKAGES:
        assert not (imported - {package}), f"{rel} is in a leaf package but imports {imported}"
        return
    forbidden = FORBIDDEN.get(package, set())
    if package.removesuffix(".py") not in ENTRY_POINTS:
        forbidden = forbidden | ENTRY_POINTS
    bad = imported & forbidden
    assert not bad, f"{rel} imports {sorted(bad)} against the layering"


def test_auth_uses_only_the_request_type_from_http():
    graph = _module_graph()
    for module, deps in graph.items():
        if module.startswith("registry.auth"):
            http = {d for d in deps if d.startswith("registry.http")}
            assert http <= AUTH_MAY_IMPORT_FROM_HTTP, (module, http)


def test_nothing_in_http_imports_the_app():
    """Handlers get a request and the services (http/request.py), never the app."""
    graph = _module_graph()
    importers = {m for m, deps in graph.items() if "registry.http.app" in deps}
    assert importers <= {"registry.server"}, importers


# The same words naming other things than routes.
NOT_ROUTE_NAMES = {
    ("auth/policy.py", "catalog"),  # the catalog access action (policy.CATALOG)
    ("auth/token.py", "catalog"),  # the reference's token scope registry:catalog:*
    ("http/manifests.py", "tags"),  # the tags list's JSON key (SPEC Discovery 22)
    ("config/build.py", "catalog"),  # the reference's free-form config section
    ("drivers/s3/api.py", "uploads"),  # S3's ?uploads query (multipart uploads)
    ("http/proxied.py", "tags"),  # the tags list's JSON key
    ("proxy/upstream.py", "tags"),  # the upstream's tags list JSON key
    ("proxy/expiry.py", "blob"),  # the kinds of expiry entries (registry:3's entry types)
    ("proxy/expiry.py", "manifest"),
    ("proxy/cache.py", "blob"),  # registry:3's proxy metrics' type label
    ("proxy/cache.py", "manifest"),
    ("storage/paths.py", "blob"),  # the expiry entries' key names their kind
    ("storage/paths.py", "manifest"),
    ("ui/api.py", "tags"),  # the UI API's JSON keys (registry/ui/API.md)
    ("ui/api.py", "referrers"),
}


def test_route_names_live_only_in_the_route_table():
    """No code outside http/routes.py spells a route's label (issue 13: the router, auth,
    metrics and notifications all read the table's records instead)."""
    from registry.http.routes import ROUTES

    labels = {r.label for r in ROUTES}
    offenders = []
    for p in _modules():
        rel = p.relative_to(ROOT).as_posix()
        if rel == "http/routes.py":
            continue
        offenders += [
            f"{rel}: {v!r}" for v in _code_strings(p)
            if v in labels and (rel, v) not in NOT_ROUTE_NAMES
        ]
    assert offenders == []


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


@functools.cache
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


def test_no_import_circles():
    assert _cycles(_module_graph()) == []
