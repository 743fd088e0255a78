"""Route a /v2/ path to a handler, matching from the right end (SPEC.md General 3).

Repository names may contain ``blobs``, ``manifests``, ``tags`` ... as components, so each
route's fixed suffix is matched at the end of the path and the name is whatever precedes
it. Paths are matched percent-encoded (raw), so ``%2e%2e`` or ``%2f`` can never become a
path component: they fail the name grammar and answer NAME_INVALID.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# (route name, pattern, allowed methods) -- order matters: uploads before blobs.
_ROUTES: tuple[tuple[str, re.Pattern[str], frozenset[str]], ...] = (
    ("base", re.compile(r"^/v2/?$"), frozenset({"GET", "HEAD"})),
    ("catalog", re.compile(r"^/v2/_catalog$"), frozenset({"GET"})),
    ("tags", re.compile(r"^/v2/(?P<name>.+)/tags/list$"), frozenset({"GET"})),
    (
        "manifest",
        re.compile(r"^/v2/(?P<name>.+)/manifests/(?P<reference>[^/]+)$"),
        frozenset({"GET", "HEAD", "PUT", "DELETE"}),
    ),
    ("uploads", re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/?$"), frozenset({"POST"})),
    (
        "upload",
        re.compile(r"^/v2/(?P<name>.+)/blobs/uploads/(?P<uuid>[^/]+)$"),
        frozenset({"GET", "PATCH", "PUT", "DELETE"}),
    ),
    (
        "blob",
        re.compile(r"^/v2/(?P<name>.+)/blobs/(?P<digest>[^/]+)$"),
        frozenset({"GET", "HEAD", "DELETE"}),
    ),
    ("referrers", re.compile(r"^/v2/(?P<name>.+)/referrers/(?P<digest>[^/]+)$"), frozenset({"GET"})),
    # Outside /v2/: start or inspect an online garbage collection (http/admin.py). Matched
    # here like the rest, so dispatch runs the authenticate hook on it.
    ("admin_gc", re.compile(r"^/admin/gc$"), frozenset({"GET", "POST"})),
)


@dataclass(frozen=True, slots=True)
class Match:
    route: str
    params: dict[str, str]
    allowed: frozenset[str]
    method_ok: bool


def match(path: str, method: str) -> Match | None:
    """The route for ``path`` (raw, percent-encoded), or None if no route has this shape.

    ``method_ok`` is False when the path matches but the method does not (405 + Allow).
    HEAD is allowed wherever GET is.
    """
    first_shape: Match | None = None
    for name, pattern, methods in _ROUTES:
        m = pattern.match(path)
        if m is None:
            continue
        result = Match(name, m.groupdict(), methods, method in methods)
        if result.method_ok:
            return result
        if first_shape is None:
            first_shape = result
    return first_shape
