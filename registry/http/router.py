"""Route a path to a record of the route table (``routes.py``), matching from the right end
(SPEC.md General 3).

Repository names may contain ``blobs``, ``manifests``, ``tags`` ... as components, so each
route's fixed suffix is matched at the end of the path and the name is whatever precedes
it. Paths are matched percent-encoded (raw), so ``%2e%2e`` or ``%2f`` can never become a
path component: they fail the name grammar and answer NAME_INVALID. Pure.
"""

from __future__ import annotations

from dataclasses import dataclass

from .request import Route
from .routes import ROUTES


@dataclass(frozen=True, slots=True)
class Match:
    route: Route
    params: dict[str, str]
    method_ok: bool  # False: the path has this route's shape but not the method (405)


def match(path: str, method: str, routes: tuple[Route, ...] = ROUTES) -> Match | None:
    """The route for ``path`` (raw, percent-encoded), or None if no route has this shape.

    The first route whose pattern and method match wins; when only shapes match, the first
    of them comes back with ``method_ok`` False (405 + its Allow header). ``routes``: the
    table to read (the app leaves the UI's routes out when the UI is off).
    """
    first_shape: Match | None = None
    for route in routes:
        if route.marker not in path:
            continue  # cannot match: spares the pattern (most routes, on every request)
        m = route.pattern.match(path)
        if m is None:
            continue
        if method in route.allowed:
            return Match(route, m.groupdict(), True)
        if first_shape is None:
            first_shape = Match(route, m.groupdict(), False)
    return first_shape
